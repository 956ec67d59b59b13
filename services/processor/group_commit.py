"""Group commit: requests waiting for a write slot are written together in one store write.

SDKs flush on a timer, so under moderate load ingest forwards many small batches. Writing each
alone spends a write slot (and Cassandra requests) per batch, and the slots, not Cassandra,
become the limit. Here each request joins a queue; whoever holds a free slot writes everything
queued (up to ``max_events``, highest lane first) as one write and answers every request in it.
A write that fails for a reason other than availability is retried request by request, so one
bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import StatusCode

from auditmesh.errors import RetryableError, StoreUnavailable
from auditmesh.metrics import Reservoir
from auditmesh.store import WriteStats
from auditmesh.telemetry.tracing import LANE, lane_name, link_of, tracer
from auditpb.v1 import audit_pb2 as pb

__all__ = ["GroupCommitter", "Outcome", "Writer"]

_tracer = tracer("auditmesh.processor")


class Writer(Protocol):
    async def __call__(self, events: Iterable[pb.Event]) -> WriteStats: ...


class AfterWrite(Protocol):
    async def __call__(self, partitions: Iterable[tuple[str, str, int]]) -> None: ...


class Digest(Protocol):
    async def __call__(self, events: Sequence[pb.Event]) -> None: ...


@dataclass
class Outcome:
    """How one request's write went: its stats, or the error that stopped it."""

    stats: WriteStats | None = None
    error: BaseException | None = None
    write_us: int = 0
    grouped_with: int = 0


@dataclass
class _Entry:
    req: pb.ProcessRequest
    taken: bool = False
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class GroupCommitter:
    """Writes queued requests in groups, with at most ``slots`` writes at a time; runs
    ``after_write`` (the cache-version bump) once per group, before any request is answered."""

    def __init__(
        self,
        write: Writer,
        after_write: AfterWrite,
        *,
        slots: int,
        max_events: int,
        write_us: Reservoir,
        digest: Digest | None = None,
        digest_alongside: bool = False,
    ) -> None:
        """``digest``, when given, chains a digest of each group's events after they are written;
        when it fails the group fails as a write would (tamper evidence, auditmesh.security.digests).
        With ``digest_alongside`` (the urgent lanes) the digest row is written at the same time
        as the events instead of after them, and the group is answered when both are written:
        one round trip to the store before the ack instead of two."""
        self._digest = digest
        self._digest_alongside = digest_alongside
        self._write = write
        self._after_write = after_write
        self.write_us = write_us
        self._slots = asyncio.Semaphore(slots)
        self._max_events = max_events
        self._queues: dict[int, deque[_Entry]] = {}  # by lane, highest lane written first
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, req: pb.ProcessRequest) -> Outcome:
        entry = _Entry(req)
        self._queues.setdefault(req.lane, deque()).append(entry)
        # The writing runs in a task of its own: a group carries other callers' requests, so a
        # caller that is cancelled (its stream ended) stops waiting, not the group's write.
        writer = asyncio.ensure_future(self._write_until_taken(entry))
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        await asyncio.shield(writer)
        return await entry.done  # written by this task, or in a group another task is writing

    async def _write_until_taken(self, entry: _Entry) -> None:
        async with self._slots:
            while not entry.taken:  # write the oldest queued requests, until this one is written
                await self._write_group(self._take())

    def _take(self) -> list[_Entry]:
        group: list[_Entry] = []
        events = 0
        for lane in sorted(self._queues, reverse=True):
            queue = self._queues[lane]
            while queue and (not group or events + len(queue[0].req.events) <= self._max_events):
                entry = queue.popleft()
                entry.taken = True
                group.append(entry)
                events += len(entry.req.events)
        return group

    async def _write_group(self, group: list[_Entry]) -> None:
        if not group:
            return
        try:
            await self._commit(group)
        finally:  # cancelled or failed mid-way: every request in the group still gets an answer
            unanswered = [entry for entry in group if not entry.done.done()]
            if unanswered:
                interrupted = Outcome(error=StoreUnavailable("write interrupted"), grouped_with=len(group))
                for entry in unanswered:
                    entry.settle(interrupted)

    async def _commit(self, group: list[_Entry]) -> None:
        started = time.perf_counter()
        # One span per group write, in the trace of the request whose task writes it, linked to
        # every request it carries (each from its own trace).
        links = [link for link in (link_of(entry.req.traceparent) for entry in group) if link is not None]
        events = sum(len(entry.req.events) for entry in group)
        attributes: dict[str, str | int] = {
            "auditmesh.events": events,
            "auditmesh.requests": len(group),
            LANE: lane_name(group[0].req.lane),
        }
        with _tracer.start_as_current_span("store.write", links=links, attributes=attributes) as span:
            try:
                written = [ev for entry in group for ev in entry.req.events]
                if self._digest is None:
                    stats = await self._write(written)
                elif self._digest_alongside:
                    stats = await _both(self._write(written), self._digest(written))
                else:
                    stats = await self._write(written)
                    await self._digest(written)
            except Exception as exc:
                span.set_status(StatusCode.ERROR, str(exc)[:200])
                if len(group) > 1 and not isinstance(exc, RetryableError):
                    for entry in group:
                        await self._write_group([entry])
                    return
                for entry in group:
                    entry.settle(Outcome(error=exc, grouped_with=len(group)))
                return
            span.set_attribute("auditmesh.partitions", len(stats.partitions))
        write_us = int((time.perf_counter() - started) * 1e6)
        self.write_us.add(write_us)
        with _tracer.start_as_current_span("cache.bump", attributes={"auditmesh.partitions": len(stats.partitions)}):
            await self._after_write(stats.partitions)
        for entry in group:
            entry.settle(Outcome(stats=stats, write_us=write_us, grouped_with=len(group)))


async def _both(write: Awaitable[WriteStats], digest: Awaitable[None]) -> WriteStats:
    """Run a write and its digest together; wait for both, and fail if either failed (with the
    write's error first): a group is answered only when neither is still under way."""
    stats, digested = await asyncio.gather(write, digest, return_exceptions=True)
    failure = stats if isinstance(stats, BaseException) else digested
    if isinstance(failure, BaseException):
        try:
            raise failure
        finally:  # no cycle through this frame keeps the exception and the group alive
            del stats, digested, failure
    assert isinstance(stats, WriteStats)
    return stats
