"""Measuring points wrapped around what a service's entry point injects, so that the servicers
stay as they are: ingest's routing (:class:`LaneWatch`), the processor's store writes
(:class:`WriteWatch`), the query service's store reads (:class:`ReadWatch`) and cache lookups
(:class:`TimedPageCache`).

Each keeps plain counters, a count of what is under way with the start of the oldest, and
:class:`~auditmesh.metrics.Reservoir` latencies; the metrics endpoint reads them when scraped.
Work that never finishes (a hung store) shows up in the age of the oldest call under way long
before it shows up in any latency histogram.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

import redis.asyncio as aioredis

from auditmesh.cache import PageCache
from auditmesh.metrics import Reservoir
from auditmesh.search import RowSource
from auditmesh.store import Row, WriteStats
from auditpb.v1 import audit_pb2 as pb

__all__ = ["LANES", "InFlight", "LaneWatch", "ReadWatch", "StoreReader", "StoreWriter", "TimedPageCache", "WriteWatch"]

T = TypeVar("T")
LANES = {pb.LANE_CRITICAL: "critical", pb.LANE_WEDDING_DAY: "wedding_day", pb.LANE_NORMAL: "normal"}
"""Lane label of each lane."""


class InFlight:
    """Calls under way: how many, and since when the oldest has been waiting."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._ids = itertools.count()

    def enter(self) -> int:
        token = next(self._ids)
        self._started[token] = time.monotonic()
        return token

    def leave(self, token: int) -> None:
        self._started.pop(token, None)

    def __len__(self) -> int:
        return len(self._started)

    def oldest_s(self) -> float:
        """Seconds the oldest call under way has been waiting; 0 when none is."""
        started = list(self._started.values())  # a copy: the endpoint reads from its own thread
        return max(0.0, time.monotonic() - min(started)) if started else 0.0


class _LaneCounts:
    def __init__(self) -> None:
        self.events_in = 0
        self.events_out = 0
        self.events_failed = 0
        self.in_flight_events = 0
        self.in_flight = InFlight()
        self.handling_us = Reservoir(2_000)
        self.forward_us = Reservoir(2_000)


class Forwarded(Protocol):
    """What ingest forwards to a processor, as far as the lane counts read it."""

    @property
    def lane(self) -> pb.Lane.ValueType: ...

    @property
    def count(self) -> int:
        """Events in the request."""
        ...

    @property
    def received_at_us(self) -> int:
        """When ingest received the first of them."""
        ...


R = TypeVar("R", bound=Forwarded)


class LaneWatch:
    """Ingest's requests to processors, per lane: events sent and acknowledged, in flight, the
    time from ingest stamping the events (after validation) to routing them (priority, lane and
    in-flight admission: ingest's own handling), and the round trip to the processor and back."""

    def __init__(self) -> None:
        self.lanes = {lane: _LaneCounts() for lane in LANES}

    async def forward(self, req: R, send: Callable[[R], Awaitable[pb.ProcessResponse]]) -> pb.ProcessResponse:
        counts = self.lanes.get(req.lane) or self.lanes[pb.LANE_NORMAL]
        events = req.count
        if events:
            counts.handling_us.add(time.time_ns() // 1000 - req.received_at_us)
        counts.events_in += events
        counts.in_flight_events += events
        token = counts.in_flight.enter()
        started = time.perf_counter()
        ok = False
        try:
            resp = await send(req)
            ok = resp.ok
            return resp
        finally:
            counts.in_flight.leave(token)
            counts.in_flight_events -= events
            if ok:
                counts.events_out += events
                counts.forward_us.add(int((time.perf_counter() - started) * 1e6))
            else:
                counts.events_failed += events


class StoreWriter(Protocol):
    async def write(self, events: Iterable[pb.Event], *, urgent: bool = False) -> WriteStats: ...


class _WriteCounts:
    def __init__(self) -> None:
        self.writes = 0
        self.errors = 0
        self.events = 0
        self.in_flight = InFlight()


class WriteWatch:
    """A store whose writes are counted per lane (urgent writes are the critical lane's), with
    the writes under way and the age of the oldest. Everything else is the wrapped store's."""

    def __init__(self, store: StoreWriter) -> None:
        self._store = store
        self.lanes = {"critical": _WriteCounts(), "bulk": _WriteCounts()}

    async def write(self, events: Iterable[pb.Event], *, urgent: bool = False) -> WriteStats:
        counts = self.lanes["critical" if urgent else "bulk"]
        token = counts.in_flight.enter()
        batch = list(events)  # counted per write, not per event
        counts.events += len(batch)
        try:
            return await self._store.write(batch, urgent=urgent)
        except BaseException:
            counts.errors += 1
            raise
        finally:
            counts.writes += 1
            counts.in_flight.leave(token)


class StoreReader(RowSource, Protocol):
    async def get(self, event_id: str) -> bytes | None: ...


class ReadWatch:
    """A store whose reads are timed per operation (buckets, rows, get), with errors and the
    reads under way."""

    OPS = ("buckets", "rows", "get")

    def __init__(self, store: StoreReader) -> None:
        self._store = store
        self.read_us = {op: Reservoir(2_000) for op in self.OPS}
        self.errors = dict.fromkeys(self.OPS, 0)
        self.in_flight = InFlight()

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        token = self.in_flight.enter()
        started = time.perf_counter()
        try:
            result = await call
        except BaseException:
            self.errors[op] += 1
            raise
        finally:
            self.in_flight.leave(token)
        self.read_us[op].add(int((time.perf_counter() - started) * 1e6))
        return result

    async def buckets(self, scope: str, key: str, newest: int, oldest: int) -> list[int]:
        return await self._timed("buckets", self._store.buckets(scope, key, newest, oldest))

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
        call = self._store.rows(scope, key, bucket, end_ms=end_ms, start_ms=start_ms, after=after, limit=limit)
        return await self._timed("rows", call)

    async def get(self, event_id: str) -> bytes | None:
        return await self._timed("get", self._store.get(event_id))


class TimedPageCache(PageCache):
    """The page cache, with each lookup (one Redis round trip, or a miss at once while Redis is
    failing) timed."""

    def __init__(self, client: aioredis.Redis | None, ttl_s: int, max_entry_bytes: int = 1 << 20) -> None:
        super().__init__(client, ttl_s, max_entry_bytes)
        self.lookup_us = Reservoir(2_000)

    async def lookup(self, scope: str, key: str, buckets: range, identity: str) -> tuple[str | None, bytes | None]:
        started = time.perf_counter()
        try:
            return await super().lookup(scope, key, buckets, identity)
        finally:
            self.lookup_us.add(int((time.perf_counter() - started) * 1e6))
