"""What a cache-version bump costs Redis: CPU per partition bumped and time per batch.

    python -m bench.cache_bump     # needs Redis on :6379 (deploy/local/infra.sh up)

Bumps 200 batches shaped like the processors' (40 wedding and 400 user partitions each, over
1,000 weddings, 8,000 users and three hour buckets), twice to reach a steady state, then five
times measured. Redis's CPU comes from its own ``INFO cpu``, so the client's time is not in
it. Uses database 14 and empties it.
"""

from __future__ import annotations

import asyncio
import random
import time

import redis
import redis.asyncio as aioredis

from auditmesh.cache import VersionBumper

URL = "redis://127.0.0.1:6379/14"


def _redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def main() -> None:
    sync = redis.Redis.from_url(URL)
    sync.flushdb()
    client = aioredis.Redis.from_url(URL)
    bumper = VersionBumper(client)
    rng = random.Random(1)
    batches = []
    for _ in range(200):
        parts = {("w", f"wed-{rng.randrange(1000)}", 490_000 + rng.randrange(3)) for _ in range(40)}
        parts |= {("u", f"user-{rng.randrange(8000)}", 490_000 + rng.randrange(3)) for _ in range(400)}
        batches.append(sorted(parts))
    for _ in range(2):
        for batch in batches:
            await bumper.bump(batch)
    cpu, started = _redis_cpu_s(sync), time.perf_counter()
    for _ in range(5):
        for batch in batches:
            await bumper.bump(batch)
    elapsed, cpu = time.perf_counter() - started, _redis_cpu_s(sync) - cpu
    bumped = 5 * sum(len(b) for b in batches)
    print(
        f"Redis CPU per partition bumped: {cpu / bumped * 1e6:.2f} us; "
        f"per batch of {bumped // (5 * len(batches))} partitions: {elapsed / (5 * len(batches)) * 1e3:.2f} ms; "
        f"failures: {bumper.failures}"
    )
    await client.aclose()
    sync.flushdb()


if __name__ == "__main__":
    asyncio.run(main())
