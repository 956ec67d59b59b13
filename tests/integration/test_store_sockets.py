"""The store's connections to Cassandra send each request at once (Nagle's algorithm off).

The driver writes a request in 4,096-byte pieces and sets no socket option of its own; with
Nagle's algorithm on, the last piece of any larger request waited for Cassandra's delayed
acknowledgement of the one before (up to 40 ms on Linux). ``bench.write_path`` measures the
write latency both ways; this checks the option on every connection the store writes through.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

from auditmesh.config import StoreConfig
from auditmesh.store import EventStore
from auditpb.v1 import audit_pb2 as pb


def _nodelay(session: object) -> list[int]:
    """TCP_NODELAY of each open connection in a session's pools."""
    found = []
    for pool in session._pools.values():  # type: ignore[attr-defined]
        connection = pool._connection  # one per host with protocol v4
        found.append(connection._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return found


def test_every_connection_the_store_writes_through_has_nagle_off(store_config: StoreConfig) -> None:
    store = EventStore.connect(store_config)
    try:
        prefix = uuid.uuid4().hex[:16] + "-"
        events = []
        for i in range(50):  # a write of more than 4 KB, on both the bulk and the urgent connections
            ev = pb.Event(
                event_id=f"{prefix}{i:x}", event_type="guest_list.export", user_id=f"u-{i}", wedding_id="w-nagle"
            )
            ev.occurred_at.FromNanoseconds(time.time_ns())
            events.append(ev)
        asyncio.run(store.write(events))
        asyncio.run(store.write(events, urgent=True))
        flags = _nodelay(store.session) + _nodelay(store.urgent_session)
    finally:
        store.close()
    assert flags and all(flags), flags
