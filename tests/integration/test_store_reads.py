"""Reads of the store that may return many rows return all of them, not the driver's first page."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from auditmesh.config import StoreConfig
from auditmesh.priority import CalendarEntry
from auditmesh.store import EventStore


def test_the_calendar_holds_more_than_one_driver_page_of_weddings(store_config: StoreConfig) -> None:
    """6,000 weddings in the calendar (the platform has 5,000+ couples) all come back: the
    driver pages reads at 5,000 rows, and a wedding past the first page would lose its
    wedding-day priority."""
    run = uuid.uuid4().hex[:8]
    entries = [CalendarEntry(f"cal-{run}-{i}", dt.date(2027, 6, 5), "UTC") for i in range(6_000)]

    async def scenario() -> set[str]:
        store = EventStore.connect(store_config)
        try:
            await store.put_calendar(entries)
            return {entry.wedding_id for entry in await store.calendar()}
        finally:
            store.close()

    found = asyncio.run(scenario())
    assert {entry.wedding_id for entry in entries} <= found
