"""CPU cost of turning events into Cassandra batches, side by side in one run: the driver's
``BatchStatement.add(prepared, values)`` against the store's :mod:`auditmesh.rowcodec`.

    python -m bench.write_path

Needs the local Cassandra (for the prepared statements' metadata); sends nothing. Both paths
start from the same 500-event batches and end with batches of the same rows, grouped the way
the processor groups them; the run checks that the two produce the same statements, byte for
byte, and only then writes ``bench/results/write-path-latest.json`` (which
``python -m bench.report write-path`` renders into the README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import uuid
from typing import Any

from cassandra.query import BatchStatement, BatchType

from auditmesh import rowcodec
from auditmesh.config import StoreConfig
from auditmesh.mesh import infra
from auditmesh.schema import create_schema
from auditmesh.store import EventStore, bucket_of, occurred_ms
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb
from bench.report import RESULTS, git_commit, machine, render_write_path, update_readme

ROWS_PER_BATCH = 100


def _events(batches: int, size: int) -> list[list[pb.Event]]:
    synthetic = Synthetic(seed=11)
    now = time.time_ns()
    out = []
    for _ in range(batches):
        batch = []
        for i, kwargs in enumerate(synthetic.events(size)):
            ev = pb.Event(event_id=uuid.uuid4().hex, source_service="bench", **kwargs)
            ev.occurred_at.FromNanoseconds(now - i * 1_000_000)
            batch.append(ev)
        out.append(batch)
    return out


def _with_bind(store: EventStore, events: list[pb.Event]) -> list[BatchStatement]:
    rows: list[tuple[Any, tuple[Any, ...]]] = []
    for ev in events:
        ms = occurred_ms(ev)
        bucket = bucket_of(ms)
        common = (ms, ev.event_id, ev.severity, ev.outcome, ev.event_type, ev.organization_id, ev.SerializeToString())
        if ev.wedding_id:
            rows.append((store._ins_wedding, (ev.wedding_id, bucket, *common)))
        rows.append((store._ins_user, (ev.user_id, bucket, *common)))
    batches = []
    for start in range(0, len(rows), ROWS_PER_BATCH):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for prepared, values in rows[start : start + ROWS_PER_BATCH]:
            batch.add(prepared, values)
        batches.append(batch)
    return batches


def _with_rowcodec(store: EventStore, events: list[pb.Event]) -> list[BatchStatement]:
    wedding_id, user_id = store._ins_wedding.query_id, store._ins_user.query_id
    rows: list[tuple[bytes, bytes, tuple[bytes, ...]]] = []
    for ev in events:
        ms = occurred_ms(ev)
        bucket = rowcodec.int32(bucket_of(ms))
        values = rowcodec.event_values(ms, ev)
        if ev.wedding_id:
            key = rowcodec.text(ev.wedding_id)
            rows.append((wedding_id, rowcodec.routing_key(key, bucket), (key, bucket, *values)))
        key = rowcodec.text(ev.user_id)
        rows.append((user_id, rowcodec.routing_key(key, bucket), (key, bucket, *values)))
    batches = []
    for start in range(0, len(rows), ROWS_PER_BATCH):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        chunk = rows[start : start + ROWS_PER_BATCH]
        for query_id, _, values in chunk:
            batch._add_statement_and_params(True, query_id, values)
        batch.routing_key = chunk[0][1]
        batches.append(batch)
    return batches


def _statements(batches: list[BatchStatement]) -> list[tuple[bytes, tuple[bytes, ...]]]:
    """What a list of batches sends: each statement's id and its encoded values."""
    return [(query_id, tuple(values)) for b in batches for _, query_id, values in b._statements_and_parameters]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    infra("up")
    cfg = StoreConfig(keyspace="auditmesh_bench")  # the benchmarks' keyspace; only its statements are used
    create_schema(cfg)
    store = EventStore.connect(cfg)
    try:
        data = _events(args.batches, 500)
        events = sum(len(b) for b in data)
        for batch in data:
            if _statements(_with_bind(store, batch)) != _statements(_with_rowcodec(store, batch)):
                print("the two paths do not produce the same statements; no result written")
                return 1
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # alternate, keep each path's best round
            for name, build in (("driver_bind", _with_bind), ("rowcodec", _with_rowcodec)):
                started = time.thread_time()
                for batch in data:
                    build(store, batch)
                us = (time.thread_time() - started) / events * 1e6
                best[name] = min(best.get(name, us), us)
    finally:
        store.close()
    result = {
        "started": started_at,
        "events": events,
        "driver_bind_us_per_event": round(best["driver_bind"], 2),
        "rowcodec_us_per_event": round(best["rowcodec"], 2),
        "speedup": round(best["driver_bind"] / best["rowcodec"], 1),
        "machine": machine(),
        "git_commit": git_commit(),
        "command": " ".join(["python -m bench.write_path", *sys.argv[1:]]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "write-path-latest.json").write_text(json.dumps(result, indent=2))
    print(
        f"building batches, CPU per event (best of {args.rounds} rounds, {events} events):\n"
        f"  driver BatchStatement.add(prepared, values): {result['driver_bind_us_per_event']} us\n"
        f"  auditmesh.rowcodec:                          {result['rowcodec_us_per_event']} us"
        f"  ({result['speedup']}x less)"
    )
    if not args.no_readme:
        update_readme(
            result, "<!-- bench:write-path:start -->", "<!-- bench:write-path:end -->", render_write_path(result)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
