"""The page cache with the real services: a processor that could not bump a cache version retires
the whole cache (the global epoch) once it reaches Redis again, and cached pages live for
AUDITMESH_CACHE_TTL_S. The processor reaches Redis through a TCP relay that the test can cut,
so only its connection fails; the query service keeps its own, direct one."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.query.servicer import CACHE_TRAILER
from tests.conftest import assert_eventually, own_mesh, slot_port, slot_redis_url
from tests.faults.proxy import Relay

REDIS_DB_URL = slot_redis_url(13)
REDIS_PORT = 6379
CACHE_TTL_S = 900  # far longer than the test: a stale page could only leave by the epoch


@dataclasses.dataclass
class CacheMesh:
    layout: MeshLayout
    supervisor: Supervisor
    processor_redis: Relay
    redis: redis.Redis


@pytest.fixture(scope="module")
def cache_mesh(store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CacheMesh]:
    """Ingest, one processor whose Redis is behind a relay, and query with Redis direct."""
    relay = Relay(REDIS_PORT, port=slot_port(26090))
    db = REDIS_DB_URL.rsplit("/", 1)[1]
    env = {"AUDITMESH_REDIS_URL": REDIS_DB_URL, "AUDITMESH_CACHE_TTL_S": str(CACHE_TTL_S)}
    behind_relay = {"processor": {"AUDITMESH_REDIS_URL": f"redis://127.0.0.1:{relay.port}/{db}"}}
    client = redis.Redis.from_url(REDIS_DB_URL)
    client.flushdb()  # this slot's database for this mesh alone
    try:
        with own_mesh(tmp_path_factory, "cache-epoch", 26051, env=env, service_env=behind_relay) as mesh:
            yield CacheMesh(*mesh, relay, client)
    finally:
        relay.close()
        client.flushdb()
        client.close()


def _search(layout: MeshLayout, wedding: str) -> tuple[list[str], str, bytes]:
    """Event ids of the first page, whether it came from the cache, and the page's bytes."""
    with grpc.insecure_channel(layout.query_target) as channel:
        call = pb_grpc.QueryServiceStub(channel).Search(pb.SearchRequest(wedding_id=wedding, page_size=50), timeout=10)
        (page,) = list(call)
        return (
            [e.event_id for e in page.events],
            dict(call.trailing_metadata() or ())[CACHE_TRAILER],
            page.SerializeToString(),
        )


def test_a_missed_version_bump_retires_the_cache_once_redis_answers(cache_mesh: CacheMesh) -> None:
    """A write whose version bump failed is visible to query once the processor reaches Redis
    again, with no further write to that wedding: the global epoch retired the cached page."""
    layout, relay = cache_mesh.layout, cache_mesh.processor_redis
    wedding = f"epoch-{uuid.uuid4().hex[:8]}"
    epoch_before = int(cache_mesh.redis.get("am:epoch") or 0)
    with AuditClient(layout.ingest_target, source_service="epoch") as client:
        first = client.log("guestlist.viewed", user_id="u-epoch", wedding_id=wedding)
        assert client.flush(30)
        assert _search(layout, wedding)[:2] == ([first], "miss")
        assert _search(layout, wedding)[:2] == ([first], "hit")  # the page is cached

        relay.block()  # the processor's Redis connection fails; query's is untouched
        try:
            second = client.log("guestlist.exported", user_id="u-epoch", wedding_id=wedding)
            assert client.flush(30)  # acked: the write is durable, its version bump failed
            # The failure path under test: the page cached before the write is still there
            # and still current by its versions (the bump never landed).
            assert _search(layout, wedding)[:2] == ([first], "hit")
        finally:
            relay.restore()
    assert_eventually(lambda: _search(layout, wedding)[0] == [second, first], timeout=15)
    assert int(cache_mesh.redis.get("am:epoch") or 0) > epoch_before


def test_a_cached_page_lives_for_the_configured_ttl(cache_mesh: CacheMesh) -> None:
    """The page query caches is stored in Redis with AUDITMESH_CACHE_TTL_S as its TTL."""
    layout = cache_mesh.layout
    wedding = f"ttl-{uuid.uuid4().hex[:8]}"
    with AuditClient(layout.ingest_target, source_service="ttl") as client:
        event = client.log("guestlist.viewed", user_id="u-ttl", wedding_id=wedding)
        assert client.flush(30)
    ids, cached, page = _search(layout, wedding)
    assert (ids, cached) == ([event], "miss")
    keys = [k for k in cache_mesh.redis.scan_iter(match="am:p:*", count=1000) if cache_mesh.redis.get(k) == page]
    assert len(keys) == 1, f"{len(keys)} cached copies of the page"
    ttl = cache_mesh.redis.ttl(keys[0])
    assert CACHE_TTL_S - 30 <= ttl <= CACHE_TTL_S, ttl
