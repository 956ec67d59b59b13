"""CPU cost of writing events into Cassandra, side by side in one run.

    python -m bench.write_path

Two phases against the local Cassandra:

- **building**: turning events into batches, the driver's ``BatchStatement.add(prepared,
  values)`` against the store's :mod:`auditmesh.rowcodec` (sends nothing). Both paths start
  from the same 500-event batches and end with batches of the same rows, grouped the way the
  processor groups them; the run checks that the two produce the same statements, byte for byte.
- **written**: the same rows written and acknowledged (:mod:`bench.writers`): the store, the
  driver's bound batches, and acsylla, alternating round by round; the CPU of the whole process
  (every thread, the drivers' I/O threads included) per event. Each writer has events of its
  own, and the run reads every one of its locator rows and a sample of its events back.

- **latency**: one write of 1 to 500 events at a time (a group commit's sizes at moderate
  load), the store's connections against the same store on the driver's socket defaults
  (Nagle's algorithm on), alternating write by write; p50 and max per size, every event read
  back by its locator.

Only a run whose checks pass writes ``bench/results/write-path-latest.json`` (which
``python -m bench.report write-path`` renders into the README).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import statistics
import sys
import time
import uuid
from typing import Any

from cassandra.query import BatchStatement, BatchType

from auditmesh import event_ids, rowcodec
from auditmesh.config import StoreConfig
from auditmesh.mesh import infra
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.store import EventStore, bucket_of, occurred_ms
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb
from bench import writers
from bench.report import RESULTS, git_commit, machine, render_write_path, update_readme

ROWS_PER_BATCH = 100
KEYSPACE = "auditmesh_bench_write_path"


def _events(batches: int, size: int, prefix: str | None = None, start: int = 0) -> list[list[pb.Event]]:
    """Synthetic batches; with ``prefix``, ids in the SDK's form (``{prefix}{sequence:x}``, the
    sequence counted on from ``start``)."""
    synthetic = Synthetic(seed=11 + start)
    now = time.time_ns()
    out = []
    sequence = start
    for _ in range(batches):
        batch = []
        for i, kwargs in enumerate(synthetic.events(size)):
            sequence += 1
            event_id = uuid.uuid4().hex if prefix is None else f"{prefix}{sequence:x}"
            ev = pb.Event(event_id=event_id, source_service="bench", **kwargs)
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


def _building(store: EventStore, batches: int, rounds: int) -> dict[str, Any] | None:
    """Best round's CPU per event of building the batches both ways, or None when they differ."""
    data = _events(batches, 500)
    events = sum(len(b) for b in data)
    for batch in data:
        if _statements(_with_bind(store, batch)) != _statements(_with_rowcodec(store, batch)):
            print("the two paths do not produce the same statements; no result written")
            return None
    best: dict[str, float] = {}
    for _ in range(rounds):  # alternate, keep each path's best round
        for name, build in (("driver_bind", _with_bind), ("rowcodec", _with_rowcodec)):
            started = time.thread_time()
            for batch in data:
                build(store, batch)
            us = (time.thread_time() - started) / events * 1e6
            best[name] = min(best.get(name, us), us)
    return {
        "events": events,
        "driver_bind_us_per_event": round(best["driver_bind"], 2),
        "rowcodec_us_per_event": round(best["rowcodec"], 2),
        "speedup": round(best["driver_bind"] / best["rowcodec"], 1),
    }


async def _written(store: EventStore, cfg: StoreConfig, batches: int, rounds: int) -> dict[str, Any] | None:
    """Each writer's median CPU per event and rate over ``rounds`` alternating rounds, or None
    when a writer's events are not all found afterwards."""
    acsylla = writers.AcsyllaWriter(store, cfg)
    await acsylla.open()
    try:
        chosen = [writers.StoreWriter(store), writers.DriverWriter(store, cfg), acsylla]
        data = {w.name: _events(batches, 500, event_ids.new_client_prefix()) for w in chosen}
        events = batches * 500
        for w in chosen:  # warm up; the store lists its partitions once, as a processor does
            for batch in data[w.name]:
                await w.write(batch)
        cpu: dict[str, list[float]] = {w.name: [] for w in chosen}
        rate: dict[str, list[float]] = {w.name: [] for w in chosen}
        for _ in range(rounds):
            for w in chosen:
                started, wall = time.process_time(), time.perf_counter()
                for batch in data[w.name]:
                    await w.write(batch)
                cpu[w.name].append((time.process_time() - started) / events * 1e6)
                rate[w.name].append(events / (time.perf_counter() - wall))
    finally:
        await acsylla.close()
    for w in chosen:
        missing = await _missing(store, cfg.keyspace, data[w.name])
        if missing:
            print(f"{w.name}: {missing} events not found after the run; no result written")
            return None
    return {
        "events_per_round": events,
        "rounds": rounds,
        "cpu_us_per_event": {name: round(statistics.median(v), 1) for name, v in cpu.items()},
        "cpu_us_per_event_rounds": {name: [round(x, 1) for x in v] for name, v in cpu.items()},
        "events_per_second": {name: round(statistics.median(v)) for name, v in rate.items()},
        "acsylla_version": importlib.metadata.version("acsylla"),
        "cassandra_driver_version": importlib.metadata.version("cassandra-driver"),
    }


LATENCY_SIZES = (1, 10, 50, 100, 500)


async def _latency(cfg: StoreConfig, writes: int) -> dict[str, Any] | None:
    """Per write size, p50 and max (ms) of a lone write with the store's socket options and with
    the driver's defaults, or None when an event is not found afterwards."""
    stores = {"store": EventStore.connect(cfg), "driver_default_sockets": EventStore.connect(cfg, sockopts=None)}
    try:
        written: dict[str, list[list[pb.Event]]] = {name: [] for name in stores}
        took: dict[str, dict[int, list[float]]] = {name: {size: [] for size in LATENCY_SIZES} for name in stores}
        prefixes = {name: event_ids.new_client_prefix() for name in stores}
        for size in LATENCY_SIZES:
            for _ in range(writes + 2):  # the first two of each size warm up
                for name, store in stores.items():
                    (batch,) = _events(1, size, prefixes[name], start=sum(map(len, written[name])))
                    started = time.perf_counter()
                    await store.write(batch)
                    took[name][size].append((time.perf_counter() - started) * 1e3)
                    written[name].append(batch)
        for name, batches in written.items():
            missing = await _missing(stores["store"], cfg.keyspace, batches)
            if missing:
                print(f"latency, {name}: {missing} events not found after the run; no result written")
                return None
    finally:
        for store in stores.values():
            store.close()

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values[2:])
        return {"p50": round(statistics.median(ordered), 2), "max": round(ordered[-1], 2)}

    return {
        "writes_per_size": writes,
        "ms": {name: {str(size): summary(v) for size, v in sizes.items()} for name, sizes in took.items()},
    }


async def _missing(store: EventStore, keyspace: str, data: list[list[pb.Event]]) -> int:
    """Events of ``data`` without their locator row, plus sampled events that do not read back."""
    events = [ev for batch in data for ev in batch]
    count = store.session.prepare(f"SELECT COUNT(*) FROM {keyspace}.events_by_id WHERE id_group = ? AND id_block = ?")
    located = sum(
        store.session.execute(count, block).one()[0]
        for block in {event_ids.locator_partition(ev.event_id) for ev in events}
    )
    sample = events[:: max(1, len(events) // 200)]
    unread = 0
    for ev in sample:
        unread += await store.get(ev.event_id) != ev.SerializeToString()
    return len(events) - located + unread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=40, help="writes of each size in the latency phase")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    infra("up")
    cfg = StoreConfig(keyspace=KEYSPACE)
    drop_keyspace(cfg)
    create_schema(cfg)
    store = EventStore.connect(cfg)
    try:
        building = _building(store, args.batches, args.rounds)
        written = asyncio.run(_written(store, cfg, args.batches, args.rounds)) if building else None
        latency = asyncio.run(_latency(cfg, args.writes)) if written else None
    finally:
        store.close()
        drop_keyspace(cfg)
    if building is None or written is None or latency is None:
        return 1
    result = {
        "started": started_at,
        **building,
        "written": written,
        "latency": latency,
        "machine": machine(),
        "git_commit": git_commit(),
        "command": " ".join(["python -m bench.write_path", *sys.argv[1:]]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "write-path-latest.json").write_text(json.dumps(result, indent=2))
    print(
        f"building batches, CPU per event (best of {args.rounds} rounds, {building['events']} events):\n"
        f"  driver BatchStatement.add(prepared, values): {result['driver_bind_us_per_event']} us\n"
        f"  auditmesh.rowcodec:                          {result['rowcodec_us_per_event']} us"
        f"  ({result['speedup']}x less)"
    )
    print(f"written and acknowledged, process CPU per event (median of {args.rounds} rounds):")
    for name, us in written["cpu_us_per_event"].items():
        print(f"  {name:12s} {us:6.1f} us  {written['events_per_second'][name]:>8,} ev/s")
    print(f"one write at a time, ms (p50 / max of {args.writes} writes):")
    for name, sizes in latency["ms"].items():
        cells = "  ".join(f"{size}: {v['p50']}/{v['max']}" for size, v in sizes.items())
        print(f"  {name:24s} {cells}")
    if not args.no_readme:
        update_readme(
            result, "<!-- bench:write-path:start -->", "<!-- bench:write-path:end -->", render_write_path(result)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
