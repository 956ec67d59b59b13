"""A client used across fork: pre-forking servers and process pools (here multiprocessing with
the fork start method) share a client made before the fork with their workers.

The parent of the scenario is a fresh interpreter of its own (this file run as a script), as a
pre-forking server's master is: a forked child runs on a copy of its parent's gRPC core, so
a test process that has run hundreds of other tests' channels and threads before forking is
not the process the SDK's fork support is for (see docs/sdk.md, "Fork")."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.queues
import subprocess
import sys
import threading
import uuid
from typing import Any

import grpc
import pytest
from conftest import Mesh, Search

from auditmesh import AuditClient
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

WORKERS = 4
PER_WORKER = 1000
BEFORE_FORK = 300

# Python 3.12+ warns on every fork of a process with threads; the SDK's thread is made safe
# to fork by the client itself, which is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _open_own_grpc_aio_channel(query: str) -> None:
    """The parent has a grpc.aio channel of its own open (as a service built on grpc.aio has),
    used once and idle while it forks: a child cannot use grpc.aio then."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def open_and_use() -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(query)
        async for _ in pb_grpc.QueryServiceStub(channel).Search(pb.SearchRequest(wedding_id="none", page_size=1)):
            pass
        return channel

    asyncio.run_coroutine_threadsafe(open_and_use(), loop).result(30)


def _worker(client: AuditClient, wedding: str, out: multiprocessing.queues.Queue[tuple[int, int]]) -> None:
    """Log PER_WORKER events through the inherited client and return without flush or close."""
    start = client.stats
    out.put((start.logged, start.pending))
    for i in range(PER_WORKER):
        client.log("guestlist.viewed", user_id=f"u-{i % 5}", wedding_id=wedding, attributes={"seq": str(i)})


def _parent(ingest: str, query: str, run: str) -> dict[str, Any]:
    """The scenario's parent: logs BEFORE_FORK events that are still pending when it forks the
    workers, waits for them, then flushes its own. What happened, for the test to check."""
    _open_own_grpc_aio_channel(query)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.queues.Queue[tuple[int, int]] = ctx.Queue()
    # A 3 s linger keeps the parent's partial batch in its buffer across the forks.
    client = AuditClient(ingest, source_service="sdk-fork", linger_ms=3000)
    try:
        parent_ids = [
            client.log(
                "auth.login.succeeded", user_id="u-p", wedding_id=f"fork-{run}-parent", attributes={"seq": str(i)}
            )
            for i in range(BEFORE_FORK)
        ]
        pending_at_fork = client.stats.pending
        workers = [ctx.Process(target=_worker, args=(client, f"fork-{run}-w{k}", out)) for k in range(WORKERS)]
        for proc in workers:
            proc.start()
        for proc in workers:
            proc.join(90)
        codes = [proc.exitcode for proc in workers]
        for proc in workers:
            if proc.is_alive():
                proc.kill()
        starts = [list(out.get(timeout=10)) for _ in range(WORKERS)] if codes == [0] * WORKERS else []
        flushed = client.flush(timeout=60)
        stats = client.stats
    finally:
        client.close(timeout=5)
    return {
        "parent_ids": parent_ids,
        "pending_at_fork": pending_at_fork,
        "codes": codes,
        "starts": starts,
        "flushed": flushed,
        "stats": [stats.logged, stats.acked, stats.pending],
    }


def test_forked_workers_deliver_their_events_exactly_once_and_the_parent_its_own(
    sdk_mesh: Mesh, search: Search
) -> None:
    """A parent (with a grpc.aio channel of its own open) logs 300 events that are still
    pending when it forks four workers; each worker starts with an empty buffer, logs 1,000
    events through the inherited client and exits without closing it. Every worker ends
    cleanly, Search finds each worker's 1,000 events once under ids no other process used, and
    the parent delivers its own 300 exactly once, after the forks, over a new stream."""
    run = uuid.uuid4().hex[:10]
    done = subprocess.run(
        [sys.executable, __file__, sdk_mesh.ingest, sdk_mesh.query, run], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])
    parent_ids = set(result["parent_ids"])
    assert result["pending_at_fork"] == BEFORE_FORK
    assert result["codes"] == [0] * WORKERS, f"workers hung or failed: exit codes {result['codes']}"
    assert result["starts"] == [[0, 0]] * WORKERS, "a worker inherited the parent's logged or pending events"
    assert result["flushed"], result
    assert result["stats"] == [BEFORE_FORK, BEFORE_FORK, 0]

    found_parent = search(f"fork-{run}-parent")
    assert sorted(ev.event_id for ev in found_parent) == sorted(parent_ids)
    all_ids = [ev.event_id for ev in found_parent]
    for k in range(WORKERS):
        found = search(f"fork-{run}-w{k}")
        seqs = sorted(int(ev.attributes["seq"]) for ev in found)
        assert seqs == list(range(PER_WORKER)), f"worker {k}: {len(found)} events stored, expected each seq once"
        assert {ev.source_service for ev in found} == {"sdk-fork"}
        assert all(ev.severity == pb.P2_MEDIUM for ev in found)
        all_ids += [ev.event_id for ev in found]
    assert len(all_ids) == len(set(all_ids)) == BEFORE_FORK + WORKERS * PER_WORKER, "two processes made the same id"


if __name__ == "__main__":
    print(json.dumps(_parent(*sys.argv[1:4])))
