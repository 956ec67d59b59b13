"""Retention against the real Cassandra: rows written by the store expire after
AUDITMESH_RETENTION_DAYS, read back with CQL's TTL() on a written row; 0 keeps them forever."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from auditmesh import event_ids
from auditmesh.config import StoreConfig
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.store import EventStore, bucket_of
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import TEST_KEYSPACE


@pytest.fixture(params=[3, 0], ids=["3-days", "forever"])
def retention(request: pytest.FixtureRequest, store_config: StoreConfig) -> Iterator[tuple[StoreConfig, int]]:
    """A keyspace of this slot's, made from the environment the services read, with a retention
    other than the default so that the value is seen to come from AUDITMESH_RETENTION_DAYS."""
    env = {
        "AUDITMESH_KEYSPACE": f"{TEST_KEYSPACE}_ttl",
        "AUDITMESH_RETENTION_DAYS": str(request.param),
        "AUDITMESH_CASSANDRA_HOSTS": ",".join(store_config.hosts),
        "AUDITMESH_CASSANDRA_PORT": str(store_config.port),
    }
    cfg = StoreConfig.from_env(env)
    drop_keyspace(cfg)
    create_schema(cfg)
    yield cfg, request.param
    drop_keyspace(cfg)


def test_written_rows_carry_the_retention_ttl(retention: tuple[StoreConfig, int]) -> None:
    """Every table an event is written to (by wedding, by user, its locator, the partition index)
    gives its rows a TTL of the retention in days, or none when it is 0."""
    cfg, days = retention
    ms = int(time.time() * 1000)
    run = uuid.uuid4().hex[:8]
    ev = pb.Event(event_id=f"ttl-{run}", user_id=f"u-{run}", wedding_id=f"w-{run}", event_type="guestlist.viewed")
    ev.occurred_at.FromMilliseconds(ms)
    store = EventStore.connect(cfg)
    try:
        asyncio.run(store.write([ev]))
        ks, bucket = cfg.keyspace, bucket_of(ms)
        ttls = {
            "events_by_wedding": store.session.execute(
                f"SELECT TTL(payload) FROM {ks}.events_by_wedding WHERE wedding_id = %s AND bucket = %s",
                (ev.wedding_id, bucket),
            ).one()[0],
            "events_by_user": store.session.execute(
                f"SELECT TTL(payload) FROM {ks}.events_by_user WHERE user_id = %s AND bucket = %s",
                (ev.user_id, bucket),
            ).one()[0],
            "events_by_id": store.session.execute(
                f"SELECT TTL(user_id) FROM {ks}.events_by_id WHERE id_group = %s AND id_block = %s AND event_id = %s",
                (*event_ids.locator_partition(ev.event_id), ev.event_id),
            ).one()[0],
        }
        # The partitions index has key columns only, which TTL() cannot read: its table default is checked.
        (default_ttl,) = store.session.execute(
            "SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
            (ks, "partitions"),
        ).one()
    finally:
        store.close()
    expected = days * 86400
    if expected:
        assert all(ttl is not None and expected - 120 <= ttl <= expected for ttl in ttls.values()), ttls
    else:
        assert all(ttl is None for ttl in ttls.values()), ttls
    assert default_ttl == expected
