"""How often one attack's running count is published when two processors count it.

    python -m bench.alert_updates    # ~15 s; Redis only (its benchmark database); prints JSON

Two detectors (the processors' own class, in this process) share the benchmark's Redis database
and the rule pack; a brute force on one user, 2,000 failed logins a second for 10 s, goes to them
in alternate batches of 100, as ingest spreads a stream over two processors. A subscriber counts
the publications of the attack's alert and keeps its last count, which must be the attack's size.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from auditmesh.detection.alerts import alerts_of_message, channel
from auditmesh.detection.config import DetectionConfig
from auditmesh.detection.detector import Detector
from auditpb.v1 import audit_pb2 as pb
from bench.report import BENCH_REDIS_URL

RULES = Path(__file__).resolve().parent.parent / "rules"
SECONDS = 10
PER_TICK = 200  # events per 0.1 s


def _failures(start_ms: int, ids: itertools.count[int], user: str) -> list[pb.Event]:
    events = []
    for _ in range(PER_TICK):
        n = next(ids)
        events.append(
            pb.Event(
                event_id=f"attack-{user}-{n}",
                event_type="auth.login.failed",
                severity=pb.P2_MEDIUM,
                outcome=pb.OUTCOME_FAILURE,
                user_id=user,
                source_ip=f"198.51.100.{n % 200}",
                received_at_us=(start_ms + n) * 1000,
            )
        )
        events[-1].occurred_at.FromMilliseconds(start_ms + n)
    return events


async def run() -> dict[str, object]:
    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    clients = [aioredis.Redis.from_url(BENCH_REDIS_URL) for _ in range(3)]
    await clients[0].flushdb()
    detectors = [Detector(DetectionConfig(rules_dir=str(RULES)), c, None, keyspace) for c in clients[:2]]
    for detector in detectors:
        detector.load()
        detector.start()
    user = f"u-attack-{uuid.uuid4().hex[:6]}"
    counts: list[int] = []
    try:
        async with clients[2].pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(channel(keyspace))

            async def listen() -> None:
                while True:
                    message = await pubsub.get_message(timeout=0.1)
                    if message is not None:
                        for alert in alerts_of_message(message["data"]):
                            if alert.rule == "brute_force_user":
                                counts.append(alert.count)

            listener = asyncio.create_task(listen())
            ids = itertools.count()
            start_ms = int(time.time() * 1000)
            for _ in range(SECONDS * 10):
                events = _failures(start_ms, ids, user)
                half = len(events) // 2
                detectors[0].offer(events[:half])
                detectors[1].offer(events[half:])
                await asyncio.sleep(0.1)
            await asyncio.sleep(3.0)  # the last counts' flushes
            for detector in detectors:
                await detector.shutdown()
            await asyncio.sleep(0.5)
            listener.cancel()
    finally:
        for c in clients:
            await c.aclose()
    return {
        "events": SECONDS * 10 * PER_TICK,
        "seconds": SECONDS,
        "publications": len(counts),
        "last_count": counts[-1] if counts else None,
        "deferred": sum(d.counts.deferred for d in detectors),
    }


def main() -> int:
    result = asyncio.run(run())
    print(json.dumps(result))
    return 0 if result["last_count"] == result["events"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
