"""A write leaves its rows to reference counting, not to the cyclic garbage collector (against
the real Cassandra): the driver keeps each request in a reference cycle, and the rows of an
answered batch must not wait in it for a collection, which in a processor costs a pause of the
event loop per few batches."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

from auditmesh.config import StoreConfig
from auditmesh.store import EventStore
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb


def _events(count: int) -> list[pb.Event]:
    now = time.time_ns()
    out = []
    for i, kwargs in enumerate(Synthetic(weddings=20, seed=3).events(count)):
        ev = pb.Event(event_id=f"gc-{uuid.uuid4().hex[:8]}-{i}", **kwargs)
        ev.occurred_at.FromNanoseconds(now - i * 1000)
        out.append(ev)
    return out


def test_written_rows_are_not_left_for_the_cyclic_collector(store_config: StoreConfig) -> None:
    store = EventStore.connect(store_config)
    events = _events(500)
    try:
        asyncio.run(store.write(_events(10)))  # the driver's first-use allocations, outside the count
        gc.collect()
        gc.disable()
        try:
            asyncio.run(store.write(events))
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = sum(isinstance(o, tuple) for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        store.close()
    # Three tables and a row tuple or two per table: without emptying answered batches, more
    # than six tuples per event end up here; what remains is the driver's per-request garbage.
    assert left < len(events) / 2, f"{left} tuples of {len(events)} events left for the cyclic collector"
