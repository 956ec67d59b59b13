"""Redis read cache for search pages, correct by construction.

Writers (processors) bump a version per partition (scope, key, hour bucket) once per batch,
after the write is durable. A cached page's key includes the versions of every bucket its
search may read, plus a per-key epoch and a global epoch, so a page cached before a write can
never be found after it: readers read the versions first, then Cassandra.

    am:v:{scope}:{key}     hash: "e" -> epoch of this hash, "{bucket}" -> version
    am:epoch               global epoch, bumped when a writer may have missed bumps
    am:p:{digest}          cached SearchPage bytes, with a TTL

A lookup is one script call: Redis reads the versions, derives the page key and returns the
page, so a cache hit costs one round trip. (The page key is derived inside the script, so this
needs one Redis instance, or a primary with replicas, not a Redis Cluster.)

A version hash expires ``_VERSION_TTL_S`` after it was created, written to or not, and may be
evicted; either way it comes back with a fresh epoch, so old page keys stay unreachable. A
writer that could not reach Redis bumps the global epoch once it can again, which retires every
cached page. Every Redis failure on the read side is a cache miss, never an error; pages also
expire after ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["PageCache", "VersionBumper"]

log = logging.getLogger("auditmesh.cache")
_EPOCH = "am:epoch"
_VERSION_TTL_S = 8 * 86400
_RETRY_AFTER_FAILURE_S = 1.0
# One call per written batch, whatever the number of partitions in it.
# ARGV[1]: a fresh epoch seed; ARGV[2]: TTL of the hashes; ARGV[3]: a flat JSON array of
# hash, bucket as a string (a JSON number would reach Redis as a Lua double: 1e+17), hash,
# bucket, ..., a pair per (hash, bucket) bumped (flat: half the encoding time of nested pairs).
# A bucket's first bump may be its hash's first (only then does the hash get its epoch and
# TTL), so an existing bucket costs one command. The hashes travel in one
# argument, not as KEYS: redis-py packs a command's arguments one by one in Python (about 1 ms
# for the ~440 partitions of a 500-event batch, against ~0.1 ms for one JSON string), and the
# cache needs a single Redis instance anyway.
_BUMP_LUA = """
local items = cjson.decode(ARGV[3])
for i = 1, #items, 2 do
  local k = items[i]
  if redis.call('HINCRBY', k, items[i + 1], 1) == 1 then
    if redis.call('HSETNX', k, 'e', ARGV[1] .. ':' .. i) == 1 then
      redis.call('EXPIRE', k, ARGV[2])
    end
  end
end
return #items / 2
"""

# KEYS[1]: the global epoch; KEYS[2]: the version hash. ARGV[1]: the page's identity;
# ARGV[2], ARGV[3]: the first and last bucket it may read. Returns {page key, page or nil}.
_LOOKUP_LUA = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local fields = redis.call('HGETALL', KEYS[2])
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
local generation = '-'
local versions = {}
for i = 1, #fields, 2 do
  local bucket = tonumber(fields[i])
  if fields[i] == 'e' then
    generation = fields[i + 1]
  elseif bucket and bucket >= first and bucket <= last then
    versions[#versions + 1] = fields[i] .. '=' .. fields[i + 1]
  end
end
table.sort(versions)
local key = 'am:p:' .. redis.sha1hex(ARGV[1] .. '|' .. epoch .. '|' .. generation .. '|' .. table.concat(versions, ','))
return {key, redis.call('GET', key)}
"""


def _vkey(scope: str, key: str) -> str:
    return f"am:v:{scope}:{key}"


def connect(url: str, timeout_s: float = 0.25) -> aioredis.Redis:
    """A client whose every call fails after ``timeout_s``: readers keep it short (a slow cache
    is a miss); writers give it longer, since a bump that times out retires the whole cache."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0, retry_on_timeout=False
    )


class VersionBumper:
    """The writer side: one script call per batch bumps every partition it wrote.

    A failed bump is remembered: the next round trip that succeeds (the next batch's, or a
    background retry every half second) first bumps the global epoch, retiring every page that
    may have been cached without that write.
    """

    def __init__(self, client: aioredis.Redis | None) -> None:
        self._client = client
        self._script = client.register_script(_BUMP_LUA) if client is not None else None
        self._missed = False
        self._retry: asyncio.Task[None] | None = None
        self.bumped = 0
        self.failures = 0

    async def bump(self, partitions: Iterable[tuple[str, str, int]]) -> None:
        if self._client is None or self._script is None:
            return
        items: list[str] = []
        for scope, key, bucket in partitions:
            items += (_vkey(scope, key), str(bucket))
        if not items:
            return
        payload = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
        try:
            if self._missed:
                await self._client.incr(_EPOCH)
            await self._script(args=[os.urandom(6).hex(), _VERSION_TTL_S, payload])
            self._missed = False
            self.bumped += 1
        except (RedisError, OSError) as exc:
            self.failures += 1
            if not self._missed:
                log.warning("cache versions not bumped (%s); the cache is retired once Redis answers", exc)
            self._missed = True
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._retire_when_back())

    async def _retire_when_back(self) -> None:
        assert self._client is not None
        while self._missed:
            await asyncio.sleep(_RETRY_AFTER_FAILURE_S / 2)
            try:
                await self._client.incr(_EPOCH)
                self._missed = False
                log.info("Redis answers again: cache retired")
            except (RedisError, OSError):
                continue

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()


class PageCache:
    """The reader side: versioned page keys, TTL and a size bound per entry; failures are misses."""

    def __init__(self, client: aioredis.Redis | None, ttl_s: int, max_entry_bytes: int = 1 << 20) -> None:
        self._client = client
        self._lookup = client.register_script(_LOOKUP_LUA) if client is not None else None
        self._ttl_s = ttl_s
        self._max_entry_bytes = max_entry_bytes
        self._skip_until = 0.0
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def stats(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "hit_rate": round(self.hits / total, 4) if total else None,
        }

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if time.monotonic() >= self._skip_until:
            log.warning("cache unavailable (%s); reading from Cassandra", exc)
        self._skip_until = time.monotonic() + _RETRY_AFTER_FAILURE_S

    async def lookup(self, scope: str, key: str, buckets: range, identity: str) -> tuple[str | None, bytes | None]:
        """The page key for this search page under the current versions, and the cached page if any."""
        if self._lookup is None or time.monotonic() < self._skip_until:
            self.misses += 1
            return None, None
        try:
            page_key, cached = await self._lookup(
                keys=[_EPOCH, _vkey(scope, key)], args=[identity, buckets.start, buckets.stop - 1]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self.misses += 1
            return None, None
        if not isinstance(cached, bytes):
            self.misses += 1
            return page_key.decode(), None
        self.hits += 1
        return page_key.decode(), cached

    async def store(self, page_key: str | None, page: bytes) -> None:
        if self._client is None or page_key is None or len(page) > self._max_entry_bytes:
            return
        try:
            await self._client.set(page_key, page, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            self._failed(exc)
