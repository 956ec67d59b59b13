"""The SDK spool across a crash: an application process logs with ingest unreachable, is killed
with kill -9, and a new process on the same spool directory delivers every spooled event
exactly once to the real mesh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import grpc

from auditmesh.mesh import MeshLayout
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import slot_port

EVENTS = 3000

_FIRST = textwrap.dedent(
    """
    import sys, time
    from auditmesh.client import AuditClient
    from auditpb.v1 import audit_pb2 as pb

    target, spool, wedding, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = AuditClient(target, source_service="spool-test", spool_dir=spool, linger_ms=5)
    for i in range(count):
        severity = pb.P0_CRITICAL if i % 10 == 0 else pb.P2_MEDIUM
        print(client.log("guestlist.viewed", user_id="u-spool", wedding_id=wedding, severity=severity))
    while client.stats.spooled < count:
        time.sleep(0.01)
    print("spooled", flush=True)
    time.sleep(600)
    """
)

_SECOND = textwrap.dedent(
    """
    import sys
    from auditmesh.client import AuditClient

    client = AuditClient(sys.argv[1], source_service="spool-test", spool_dir=sys.argv[2])
    ok = client.flush(60)
    stats = client.stats
    client.close(10)
    print(stats.spool_recovered, stats.acked, stats.spooled, ok)
    """
)


def _search(layout: MeshLayout, wedding: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    token = ""
    with grpc.insecure_channel(layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        while True:
            req = pb.SearchRequest(wedding_id=wedding, page_size=1000, page_token=token, max_pages=100)
            pages = list(stub.Search(req, timeout=30))
            for page in pages:
                seen.update(ev.event_id for ev in page.events)
            token = pages[-1].next_page_token
            if not token:
                return seen


def test_a_killed_process_spool_is_delivered_by_the_next(mesh: MeshLayout, tmp_path: Path) -> None:
    """Events spooled by a process killed with kill -9 while ingest was down are stored exactly once by the next."""
    spool = tmp_path / "spool"
    wedding = f"spool-{uuid.uuid4().hex[:8]}"
    unreachable = f"127.0.0.1:{slot_port(27599)}"  # no ingest listens there: the mesh is "down"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.Popen(
        [sys.executable, "-c", _FIRST, unreachable, str(spool), wedding, str(EVENTS)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert first.stdout is not None
    logged = []
    for line in first.stdout:
        if line.strip() == "spooled":
            break
        logged.append(line.strip())
    assert len(logged) == EVENTS, f"the first process ended early ({first.poll()})"
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    second = subprocess.run(
        [sys.executable, "-c", _SECOND, mesh.ingest_target, str(spool)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    recovered, acked, still_spooled, flushed = second.stdout.split()
    assert (int(recovered), int(acked), int(still_spooled), flushed) == (EVENTS, EVENTS, 0, "True"), second.stdout

    seen = _search(mesh, wedding)
    assert set(seen) == set(logged), f"{len(set(logged) - set(seen))} spooled events missing"
    assert all(n == 1 for n in seen.values()), "an event was stored more than once"
