"""What the rule pack costs per event as a function of the events in a detection round.

    python -m bench.detector_rounds                 # ~2 minutes; prints JSON
    python -m bench.detector_rounds --split-p0      # P0 events offered apart, as ingest forwards them

The processors' own :class:`~auditmesh.detection.detector.Detector`, alone in this process, with
the rule pack, the benchmark's Redis database and the local Cassandra (alerts stored, in a
keyspace of its own, dropped at the end), is offered the synthetic mix of ``bench.alerts`` at a
fixed rate in batches of each size, one size after the other. A batch waits for no other, so
each batch is a round (or two with ``--split-p0``: its P0 events lead a round of their own). The
process's CPU time (every thread: the driver's I/O thread writes the alerts) per event, the
rounds, and the alerts raised and updated, for each size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from auditmesh.config import StoreConfig
from auditmesh.detection.service import build_detector, close_detector
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.store import EventStore
from auditpb.v1 import audit_pb2 as pb
from bench.alerts import synthetic_mix
from bench.report import BENCH_REDIS_URL

KEYSPACE = "auditmesh_bench_detector_rounds"
RULES = Path(__file__).resolve().parent.parent / "rules"


async def _one(store: EventStore, cfg: StoreConfig, batch: int, rate: float, n: int, split: bool) -> dict[str, Any]:
    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    detector = build_detector({"AUDITMESH_DETECTION_RULES": str(RULES)}, BENCH_REDIS_URL, store.session, cfg)
    detector.load()
    detector.start()
    events, _ = synthetic_mix(n)
    for ev in events:
        ev.event_id = uuid.uuid4().hex  # fresh ids: each size's windows count its own events
    batches = [events[i : i + batch] for i in range(0, n, batch)]
    started, cpu = time.perf_counter(), time.process_time()
    for k, b in enumerate(batches):
        if split:
            detector.offer([ev for ev in b if ev.severity == pb.P0_CRITICAL])
            detector.offer([ev for ev in b if ev.severity != pb.P0_CRITICAL])
        else:
            detector.offer(b)
        await asyncio.sleep(max(0.0, started + (k + 1) * batch / rate - time.perf_counter()))
    deadline = time.monotonic() + 60
    while detector.queue_events and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, no event to wait on
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.5)  # the last rounds' calls and alert writes
    used = time.process_time() - cpu
    out = {
        "events_per_batch": batch,
        "events": n,
        "rounds": detector.rounds,
        "cpu_us_per_event": round(used / n * 1e6, 2),
        "alerts_raised": detector.alerts_raised,
        "alerts_updated": detector.alerts_updated,
        "redis_errors": detector.redis_errors,
    }
    await close_detector(detector)
    return out


async def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = StoreConfig(keyspace=KEYSPACE)
    store = EventStore.connect(cfg)
    try:
        n = int(args.rate * args.seconds)
        return [await _one(store, cfg, size, args.rate, n, args.split_p0) for size in args.sizes]
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2500])
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="per size")
    parser.add_argument("--split-p0", action="store_true", help="offer each batch's P0 events apart, first")
    args = parser.parse_args()
    cfg = StoreConfig(keyspace=KEYSPACE)
    drop_keyspace(cfg)
    create_schema(cfg)
    try:
        results = asyncio.run(_run(args))
    finally:
        drop_keyspace(cfg)
    print(json.dumps({"rate": args.rate, "split_p0": args.split_p0, "sizes": results}, indent=2))
    return 0 if all(r["alerts_raised"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
