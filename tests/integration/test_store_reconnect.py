"""The store comes back within seconds of Cassandra coming back, even if its connections were
reset while idle (the driver only finds a dead idle connection by its heartbeat)."""

from __future__ import annotations

import asyncio
import time

from auditmesh.config import StoreConfig
from auditmesh.errors import StoreUnavailable
from auditmesh.store import EventStore
from tests.faults.proxy import Relay


def test_reads_succeed_within_seconds_after_an_outage_that_reset_idle_connections(store_config: StoreConfig) -> None:
    """Connections through a relay are reset and refused for 3 s while the store is idle; reads
    answer again within 10 s of the relay coming back (52.7 s with the driver's default 30 s
    heartbeat)."""

    async def outage_then_first_answer() -> float:
        relay = Relay(store_config.port)
        cfg = StoreConfig(hosts=("127.0.0.1",), port=relay.port, keyspace=store_config.keyspace)
        store = EventStore.connect(cfg)
        try:
            await store.buckets("w", "reconnect", 10, 0)
            await asyncio.sleep(1.0)
            relay.block()
            await asyncio.sleep(3.0)
            relay.restore()
            restored = time.monotonic()
            while time.monotonic() - restored < 60:
                try:
                    await store.buckets("w", "reconnect", 10, 0)
                    return time.monotonic() - restored
                except StoreUnavailable:
                    await asyncio.sleep(0.2)
            return float("inf")
        finally:
            store.close()
            relay.close()

    assert asyncio.run(outage_then_first_answer()) < 10.0
