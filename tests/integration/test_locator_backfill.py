"""Events stored before the ``events_by_id`` locator existed become findable by ``reindex``
(against the real Cassandra)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from auditmesh.config import StoreConfig
from auditmesh.schema import create_schema
from auditmesh.store import EventStore, bucket_of
from auditpb.v1 import audit_pb2 as pb


def test_backfill_writes_the_locator_of_events_stored_without_one(store_config: StoreConfig) -> None:
    # A keyspace of its own: the backfill scans a whole table, and the shared one grows.
    cfg = dataclasses.replace(store_config, keyspace=f"auditmesh_backfill_{uuid.uuid4().hex[:8]}")
    create_schema(cfg)
    store = EventStore.connect(cfg)
    try:
        ms = time.time_ns() // 1_000_000
        ev = pb.Event(event_id=f"legacy-{uuid.uuid4().hex}", user_id=f"u-{uuid.uuid4().hex[:8]}", event_type="a.b")
        ev.occurred_at.FromMilliseconds(ms)
        store.session.execute(
            f"INSERT INTO {cfg.keyspace}.events_by_user (user_id, bucket, occurred_at, event_id, payload)"
            " VALUES (%s, %s, %s, %s, %s)",
            (ev.user_id, bucket_of(ms), ms, ev.event_id, ev.SerializeToString()),
        )
        assert asyncio.run(store.get(ev.event_id)) is None  # stored the old way: no locator yet

        seen: list[int] = []
        scanned = store.backfill_locators(seen.append, page=1000)
        assert scanned == 1 and seen == [1]
        assert asyncio.run(store.get(ev.event_id)) == ev.SerializeToString()

        store.backfill_locators()  # idempotent
        assert asyncio.run(store.get(ev.event_id)) == ev.SerializeToString()
    finally:
        store.session.execute(f"DROP KEYSPACE IF EXISTS {cfg.keyspace}", timeout=120)
        store.close()
