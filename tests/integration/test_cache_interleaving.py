"""Never stale under concurrency, against the real Redis and Cassandra: a write that lands between
the query service reading the cache versions and storing the page it read never leaves that
page reachable, in the cache alone and through the query servicer's own page path."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from auditmesh.cache import PageCache, VersionBumper
from auditmesh.config import StoreConfig
from auditmesh.search import PageBounds, SearchSpec, TokenSigner
from auditmesh.store import EventStore, Row
from auditmesh.validation import Limits
from auditpb.v1 import audit_pb2 as pb
from services.query.servicer import QueryServicer
from tests.conftest import slot_redis_url

URL = slot_redis_url(12)
PAGE = range(10, 13)  # the buckets the cached page may read


@pytest.mark.parametrize(
    "written",
    [
        [("w", "{w}", 11)],  # a bucket that had a version already
        [("w", "{w}", 12)],  # a bucket of the page with no version yet
        [("w", "{w}", 11), ("w", "{w}", 12), ("u", "someone", 11)],  # several partitions in one batch
    ],
    ids=["known-bucket", "new-bucket", "batch"],
)
@pytest.mark.parametrize("hash_existed", [True, False], ids=["versions-existed", "first-write"])
def test_a_write_between_version_read_and_page_store_retires_that_page(
    infrastructure: None, written: list[tuple[str, str, int]], hash_existed: bool
) -> None:
    """The page key is derived from the versions read before the write, so the page stored under
    it is never found after the write, whether or not the wedding had versions before."""

    async def scenario() -> tuple[bytes | None, bytes | None]:
        client = aioredis.Redis.from_url(URL)
        bumper, pages = VersionBumper(client), PageCache(client, ttl_s=60)
        wedding = f"race-{uuid.uuid4().hex[:8]}"
        identity = f"search of {wedding}"  # as query's: a page's identity names its wedding
        partitions = [(scope, key.format(w=wedding), bucket) for scope, key, bucket in written]
        try:
            if hash_existed:
                await bumper.bump([("w", wedding, 11)])
            key, cached = await pages.lookup("w", wedding, PAGE, identity)  # query reads the versions
            assert cached is None
            await bumper.bump(partitions)  # a processor's write lands and bumps
            await pages.store(key, b"read before the write")  # query stores what it read
            _, after = await pages.lookup("w", wedding, PAGE, identity)
            # A page stored by a reader that started after the write is found (the cache works).
            fresh_key, _ = await pages.lookup("w", wedding, PAGE, identity)
            await pages.store(fresh_key, b"read after the write")
            _, fresh = await pages.lookup("w", wedding, PAGE, identity)
            assert bumper.failures == 0
            return after, fresh
        finally:
            await client.aclose()

    after, fresh = asyncio.run(scenario())
    assert after is None, "a page read before a write was served after it"
    assert fresh == b"read after the write"


class WriteDuringRead:
    """The real store, with one real write (and its version bump, as a processor does it) landing
    right after the first rows of a search were read: the moment between query's version read
    and its page store."""

    def __init__(self, store: EventStore, bumper: VersionBumper, event: pb.Event) -> None:
        self._store = store
        self._bumper = bumper
        self._event: pb.Event | None = event

    async def buckets(self, scope: str, key: str, newest: int, oldest: int) -> list[int]:
        return await self._store.buckets(scope, key, newest, oldest)

    async def rows(
        self,
        scope: str,
        key: str,
        bucket: int,
        *,
        end_ms: int,
        start_ms: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Row]:
        rows = await self._store.rows(scope, key, bucket, end_ms=end_ms, start_ms=start_ms, after=after, limit=limit)
        if self._event is not None:
            event, self._event = self._event, None
            written = await self._store.write([event])
            await self._bumper.bump(written.partitions)
        return rows

    async def get(self, event_id: str) -> bytes | None:
        return await self._store.get(event_id)


def _event(wedding: str, event_id: str, ms: int) -> pb.Event:
    ev = pb.Event(event_id=event_id, user_id=f"u-{wedding}", wedding_id=wedding, event_type="guestlist.viewed")
    ev.occurred_at.FromMilliseconds(ms)
    return ev


@pytest.fixture
def store(store_config: StoreConfig) -> Iterator[EventStore]:
    s = EventStore.connect(store_config)
    yield s
    s.close()


def test_the_query_page_path_never_caches_a_page_a_concurrent_write_made_stale(store: EventStore) -> None:
    """Through QueryServicer's page path: a page read while a write landed is served once, and the
    next search (a cache miss, not that page) shows the write."""
    wedding = f"race-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    first, second = _event(wedding, f"{wedding}-1", now_ms - 1000), _event(wedding, f"{wedding}-2", now_ms)

    async def scenario() -> list[tuple[list[str], bool]]:
        client = aioredis.Redis.from_url(URL)
        bumper = VersionBumper(client)
        try:
            await bumper.bump((await store.write([first])).partitions)
            servicer = QueryServicer(
                WriteDuringRead(store, bumper, second),
                TokenSigner(b"k"),
                PageCache(client, 60),
                bounds=PageBounds(),
                limits=Limits(),
            )
            spec = SearchSpec.from_request(pb.SearchRequest(wedding_id=wedding, page_size=50))
            seen = []
            for _ in range(3):
                raw, _, cached = await servicer._page(spec, None, more=False)
                seen.append(([e.event_id for e in pb.SearchPage.FromString(raw).events], cached))
            assert bumper.failures == 0
            return seen
        finally:
            await client.aclose()

    during, after, again = asyncio.run(scenario())
    assert during == ([first.event_id], False)  # read before the write landed
    assert after == ([second.event_id, first.event_id], False), "the page read during the write was cached"
    assert again == ([second.event_id, first.event_id], True)
