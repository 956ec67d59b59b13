"""The query side at work: the Redis page cache is never stale, pagination holds still under
concurrent writes, and Redis going away only costs cache hits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout, infra
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.query.servicer import CACHE_TRAILER
from tests.conftest import assert_eventually


@pytest.fixture(scope="module")
def query(mesh: MeshLayout) -> Iterator[pb_grpc.QueryServiceStub]:
    with grpc.insecure_channel(mesh.query_target) as channel:
        yield pb_grpc.QueryServiceStub(channel)


def first_page(query: pb_grpc.QueryServiceStub, wedding: str, page_size: int = 50) -> pb.SearchPage:
    (page,) = list(query.Search(pb.SearchRequest(wedding_id=wedding, page_size=page_size), timeout=10))
    return page


def first_page_and_cache(query: pb_grpc.QueryServiceStub, wedding: str) -> tuple[pb.SearchPage, str]:
    """The first page and the ``auditmesh-cache`` trailer saying whether it came from the cache."""
    call = query.Search(pb.SearchRequest(wedding_id=wedding, page_size=50), timeout=10)
    (page,) = list(call)
    trailers = dict(call.trailing_metadata() or ())
    return page, trailers[CACHE_TRAILER]


def cache_stats(supervisor: Supervisor) -> dict[str, int]:
    stats = supervisor.stats("query") or {}
    return dict(stats.get("cache") or {})


def test_write_query_write_query_is_never_stale(
    mesh: MeshLayout, supervisor: Supervisor, query: pb_grpc.QueryServiceStub
) -> None:
    wedding = f"cache-{uuid.uuid4().hex[:8]}"
    with AuditClient(mesh.ingest_target) as client:
        first = client.log("guestlist.viewed", user_id="u1", wedding_id=wedding)
        assert client.flush(30)
        page, cache = first_page_and_cache(query, wedding)
        assert ([e.event_id for e in page.events], cache) == ([first], "miss")
        hits_before = cache_stats(supervisor).get("hits", 0)
        page, cache = first_page_and_cache(query, wedding)
        assert ([e.event_id for e in page.events], cache) == ([first], "hit")
        assert_eventually(lambda: cache_stats(supervisor).get("hits", 0) > hits_before, timeout=10)
        for round_ in range(3):
            newer = client.log("guestlist.export", user_id="u1", wedding_id=wedding)
            assert client.flush(30)
            page, cache = first_page_and_cache(query, wedding)
            ids = [e.event_id for e in page.events]
            assert ids[0] == newer, f"round {round_}: a page cached before the write was served after it"
            assert len(ids) == round_ + 2
            assert cache == "miss"
            assert first_page_and_cache(query, wedding) == (page, "hit")


def test_pagination_is_stable_under_concurrent_writes(mesh: MeshLayout, query: pb_grpc.QueryServiceStub) -> None:
    wedding = f"stable-{uuid.uuid4().hex[:8]}"
    with AuditClient(mesh.ingest_target) as client:
        before = {
            client.log(
                "timeline.updated",
                user_id=f"u{i % 5}",
                wedding_id=wedding,
                occurred_at_ns=time.time_ns() - (i + 1) * 1_000_000,
            )
            for i in range(300)
        }
        assert client.flush(60)
        stop = threading.Event()

        def keep_writing() -> None:
            while not stop.is_set():
                client.log("timeline.updated", user_id="writer", wedding_id=wedding)
                time.sleep(0.002)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            seen: list[str] = []
            token = ""
            while True:
                req = pb.SearchRequest(wedding_id=wedding, page_size=23, page_token=token)
                (page,) = list(query.Search(req, timeout=10))
                seen += [e.event_id for e in page.events]
                token = page.next_page_token
                if not token:
                    break
                time.sleep(0.01)
        finally:
            stop.set()
            writer.join()
        assert client.flush(60)
    old = [eid for eid in seen if eid in before]
    assert sorted(old) == sorted(before), "an event that existed before the search was skipped"
    assert len(seen) == len(set(seen)), "an event was returned twice"


def test_redis_down_degrades_to_cassandra(mesh: MeshLayout, query: pb_grpc.QueryServiceStub) -> None:
    wedding = f"noredis-{uuid.uuid4().hex[:8]}"
    with AuditClient(mesh.ingest_target) as client:
        client.log("payment.viewed", user_id="u1", wedding_id=wedding)
        assert client.flush(30)
        first_page(query, wedding)
        infra("stop-redis")
        try:
            later = client.log("payment.viewed", user_id="u1", wedding_id=wedding)
            assert client.flush(30)  # writes do not depend on Redis
            page = first_page(query, wedding)
            assert page.events[0].event_id == later and len(page.events) == 2
        finally:
            infra("start-redis")
        # Versions bumped while Redis was away were lost: the global epoch retires old pages.
        newest = client.log("payment.viewed", user_id="u1", wedding_id=wedding)
        assert client.flush(30)
        assert_eventually(lambda: first_page(query, wedding).events[0].event_id == newest, timeout=10)
        assert len(first_page(query, wedding).events) == 3
