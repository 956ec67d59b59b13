"""The wedding calendar as ingest sees it: a snapshot rebuilt periodically from the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from auditmesh.errors import AuditError
from auditmesh.priority import CalendarEntry, CalendarSnapshot, snapshot_calendar

__all__ = ["CalendarView"]

log = logging.getLogger("auditmesh.ingest")


class CalendarView:
    """Holds the current :class:`CalendarSnapshot`; ``run`` refreshes it until cancelled."""

    def __init__(self, load: Callable[[], Awaitable[list[CalendarEntry]]]) -> None:
        self._load = load
        self._entries: list[CalendarEntry] = []
        self._snapshot = snapshot_calendar([], dt.datetime.now(dt.UTC))

    def snapshot(self) -> CalendarSnapshot:
        return self._snapshot

    async def refresh(self) -> None:
        try:
            self._entries = await self._load()
        except AuditError as exc:
            log.warning("wedding calendar not refreshed, keeping %d entries: %s", len(self._entries), exc)
        self._snapshot = snapshot_calendar(self._entries, dt.datetime.now(dt.UTC))

    async def run(self, interval_s: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)
