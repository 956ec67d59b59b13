"""The cache's version hashes against a real Redis: a bump retires exactly the pages of the
buckets it touched, and a hash that expires or is evicted never brings an old page back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from auditmesh.cache import _VERSION_TTL_S, PageCache, VersionBumper, _vkey
from tests.conftest import slot_redis_url

URL = slot_redis_url(12)


@pytest.fixture
def clean_db(infrastructure: None) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(URL)
    r.flushdb()
    yield r
    r.flushdb()


async def _scenario(steps: list[tuple[str, object]]) -> list[object]:
    """Run (op, arg) steps with one bumper and one page cache; returns each step's result."""
    client = aioredis.Redis.from_url(URL)
    bumper, pages = VersionBumper(client), PageCache(client, ttl_s=60)
    out: list[object] = []
    try:
        for op, arg in steps:
            if op == "bump":
                out.append(await bumper.bump(arg))  # type: ignore[arg-type]
            elif op == "cache":  # look up, store a page under the key the lookup derived
                key, _ = await pages.lookup("w", "wed-1", range(10, 13), "page-a")
                await pages.store(key, arg)  # type: ignore[arg-type]
                out.append(key)
            else:  # "get"
                out.append((await pages.lookup("w", "wed-1", range(10, 13), "page-a"))[1])
        assert bumper.failures == 0
    finally:
        await client.aclose()
    return out


def test_bump_retires_pages_of_the_buckets_it_touched(clean_db: redis.Redis) -> None:
    out = asyncio.run(
        _scenario(
            [
                ("bump", [("w", "wed-1", 11)]),
                ("cache", b"v1"),
                ("get", None),
                ("bump", [("w", "wed-1", 20), ("w", "wed-2", 11)]),  # outside the page's buckets
                ("get", None),
                ("bump", [("w", "wed-1", 12), ("w", "wed-1", 12)]),  # inside, twice in a batch
                ("get", None),
            ]
        )
    )
    cached, after_other_buckets, after_own_bucket = out[2], out[4], out[6]
    assert cached == b"v1"
    assert after_other_buckets == b"v1"
    assert after_own_bucket is None
    versions = clean_db.hgetall("am:v:w:wed-1")
    assert versions[b"11"] == b"1" and versions[b"12"] == b"2" and versions[b"20"] == b"1"
    assert b"e" in versions


def test_a_hash_gets_its_ttl_once_and_keeps_its_epoch_while_written(clean_db: redis.Redis) -> None:
    asyncio.run(_scenario([("bump", [("w", "wed-1", 11)])]))
    epoch = clean_db.hget("am:v:w:wed-1", "e")
    assert _VERSION_TTL_S - 5 <= clean_db.ttl("am:v:w:wed-1") <= _VERSION_TTL_S
    clean_db.expire("am:v:w:wed-1", 1000)
    asyncio.run(_scenario([("bump", [("w", "wed-1", 11)]), ("bump", [("w", "wed-1", 12)])]))
    assert clean_db.ttl("am:v:w:wed-1") <= 1000
    assert clean_db.hget("am:v:w:wed-1", "e") == epoch


@pytest.mark.parametrize("gone_by", ["expiry", "eviction"])
def test_a_version_hash_that_comes_back_never_serves_an_old_page(clean_db: redis.Redis, gone_by: str) -> None:
    asyncio.run(_scenario([("bump", [("w", "wed-1", 11)]), ("cache", b"before")]))
    if gone_by == "expiry":
        clean_db.pexpire("am:v:w:wed-1", 1)
        asyncio.run(asyncio.sleep(0.05))
        assert clean_db.exists("am:v:w:wed-1") == 0
    else:
        clean_db.delete("am:v:w:wed-1")
    # The versions restart at 1 after the hash is gone, as they were when "before" was cached;
    # the fresh epoch keeps that page unreachable.
    absent, _, cached_meanwhile, _, after = asyncio.run(
        _scenario(
            [("get", None), ("cache", b"meanwhile"), ("get", None), ("bump", [("w", "wed-1", 11)]), ("get", None)]
        )
    )
    assert absent is None
    assert cached_meanwhile == b"meanwhile"
    assert after is None
    assert clean_db.hget("am:v:w:wed-1", "11") == b"1"


def test_any_id_bumps_the_hash_the_reader_reads(clean_db: redis.Redis) -> None:
    """Ids are not restricted to a charset: quotes, backslashes, separators, control characters,
    non-ASCII and large buckets reach the very hash and field the reader side derives."""
    odd = ['wed"1', "wed\\2", " wed\n3\t", "wed:4,5", "wed\x005", "mariée-6", "婚礼-7", "🎉-8", "w" * 128]
    partitions = [("w", key, 400_000 + i) for i, key in enumerate(odd)] + [("u", odd[0], 2**60), ("u", odd[1], -1)]
    asyncio.run(_scenario([("bump", partitions), ("bump", partitions[:1])]))
    for scope, key, bucket in partitions:
        versions = clean_db.hgetall(_vkey(scope, key))
        expected = b"2" if (scope, key, bucket) == partitions[0] else b"1"
        assert versions[str(bucket).encode()] == expected, (scope, key)
        assert b"e" in versions
    assert len(clean_db.keys("am:v:*")) == len(partitions)
