"""Many clients in one process: opened, used and closed in several threads, some at the same
time and some one after another, they share the SDK's one loop, so closing one never disturbs
the others and gRPC prints nothing on the way."""

from __future__ import annotations

import json

from conftest import Mesh, RunPython, Search

THREADS = 4
ROUNDS = 3
PER_CLIENT = 150

_SCRIPT = """
import json, threading
from auditmesh import AuditClient
from auditpb.v1 import audit_pb2 as pb

target, wedding, threads, rounds, per_client = {args}
report = []
lock = threading.Lock()
together = threading.Barrier(threads)


def use(client, name):
    ids = [
        client.log(
            "guestlist.viewed",
            user_id=f"u-{{i % 3}}",
            wedding_id=wedding,
            severity=pb.P0_CRITICAL if i == 0 else pb.P2_MEDIUM,
            attributes={{"client": name, "seq": str(i)}},
        )
        for i in range(per_client)
    ]
    flushed = client.flush(timeout=60)
    return ids, flushed


def finish(client, name, ids, flushed):
    closed = client.close(timeout=60)
    s = client.stats
    with lock:
        report.append({{"name": name, "ids": ids, "flushed": flushed, "closed": closed,
                       "logged": s.logged, "acked": s.acked, "pending": s.pending,
                       "rejected": s.rejected, "dropped": s.dropped}})


def worker(k):
    for r in range(rounds):
        name = f"t{{k}}-r{{r}}"
        client = AuditClient(target, source_service="sdk-many", linger_ms=5)
        ids, flushed = use(client, name)
        if r == 1:
            together.wait(60)  # every thread closes its second client at the same moment
        finish(client, name, ids, flushed)


# One client stays open across all the others' lives and keeps logging after they closed.
lasting = AuditClient(target, source_service="sdk-many", linger_ms=5)
first_ids, _ = use(lasting, "lasting-a")
workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for t in workers:
    t.start()
for t in workers:
    t.join(300)
more_ids, flushed = use(lasting, "lasting-b")
finish(lasting, "lasting", first_ids + more_ids, flushed)
print(json.dumps(report))
"""


def test_clients_opened_and_closed_in_threads_deliver_everything_with_clean_stderr(
    sdk_mesh: Mesh, search: Search, run_python: RunPython, wedding: str
) -> None:
    """In a fresh interpreter, 4 threads each open, use and close 3 clients in turn (their
    second ones all closing at the same moment) while a 13th client stays open throughout and
    logs again once they are gone: every client flushes and closes with all its events
    acknowledged, Search finds each of the 13 x 150 events once, and the process writes
    nothing to stderr (no traceback, no "Event loop is closed") and exits 0."""
    args = (sdk_mesh.ingest, wedding, THREADS, ROUNDS, PER_CLIENT)
    out = run_python(_SCRIPT.format(args=repr(args)), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", f"the process wrote to stderr:\n{out.stderr}"
    report = json.loads(out.stdout)
    assert len(report) == THREADS * ROUNDS + 1
    logged = 0
    for client in report:
        expected = PER_CLIENT * (2 if client["name"] == "lasting" else 1)
        counts = [client[k] for k in ("logged", "acked", "pending", "rejected", "dropped")]
        assert counts == [expected, expected, 0, 0, 0], client["name"]
        assert client["flushed"] and client["closed"], client["name"]
        logged += expected
    ids = [i for client in report for i in client["ids"]]
    assert len(set(ids)) == len(ids) == logged
    assert sorted(ev.event_id for ev in search(wedding)) == sorted(ids)
