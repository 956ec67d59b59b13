"""Processor membership in Redis: one key per live processor with a short TTL.

A processor registers when it is ready (``SET prefix:address PX ttl``), refreshes the key
every ``ttl/3`` and deletes it when it starts draining; a processor that dies disappears when
its key expires. Ingest lists the keys every ``interval`` and links to whoever is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Membership", "watch"]

log = logging.getLogger("auditmesh.scaling")


class Membership:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: float = 3.0) -> None:
        self._client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, address: str) -> str:
        return f"{self.prefix}:{address}"

    async def register(self, address: str, service: str = "processor") -> None:
        await self._client.set(self._key(address), service, px=int(self.ttl_s * 1000))

    async def deregister(self, address: str) -> None:
        await self._client.delete(self._key(address))

    async def live(self) -> list[str]:
        """Addresses of every registered member, sorted."""
        found: list[str] = []
        async for key in self._client.scan_iter(match=f"{self.prefix}:*", count=1000):
            text = key.decode() if isinstance(key, bytes) else str(key)
            found.append(text[len(self.prefix) + 1 :])
        return sorted(found)

    async def heartbeat(self, address: str, stop: asyncio.Event) -> None:
        """Register now and every ``ttl/3`` until ``stop`` is set, then deregister. Redis being
        unreachable is logged and retried: the processor keeps serving."""
        failing = False
        while not stop.is_set():
            try:
                await self.register(address)
                if failing:
                    log.info("membership of %s registered again", address)
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("membership of %s not registered: %s", address, exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
        with contextlib.suppress(RedisError, OSError):
            await self.deregister(address)


async def watch(membership: Membership, apply: Callable[[list[str]], None], interval_s: float = 0.5) -> None:
    """Call ``apply`` with the live members whenever they change, checking every ``interval_s``;
    when Redis cannot be read the last known members stay."""
    known: list[str] | None = None
    while True:
        try:
            live = await membership.live()
        except (RedisError, OSError) as exc:
            log.warning("membership not read, keeping %s: %s", known, exc)
        else:
            if live != known:
                apply(live)
                known = live
        await asyncio.sleep(interval_s)
