"""ProcessorService: one bidi stream per ingest connection; each request is written to the
store and answered with ok only after the write succeeded.

Requests are written through group commits (:mod:`services.processor.group_commit`); the
critical and wedding-day lanes each have a committer and write slots of their own, and write
on the store's connections for urgent writes, so a backlog of bulk writes never delays them.
The wedding-day lane's slots are a separate, bounded set: it cannot take the critical lane's
slots nor the normal lane's, so neither of those is ever starved by a busy wedding day.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Protocol

import grpc
from opentelemetry.trace import SpanKind, StatusCode

from auditmesh.cache import VersionBumper
from auditmesh.errors import RetryableError
from auditmesh.logthrottle import Throttle
from auditmesh.metrics import Reservoir
from auditmesh.serving import respond_concurrently, send_all
from auditmesh.store import WriteStats
from auditmesh.telemetry.tracing import LANE, context_of, lane_name, traceparent, tracer
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.processor.group_commit import Digest, GroupCommitter

__all__ = ["EventWriter", "ProcessorServicer"]

log = logging.getLogger("auditmesh.processor")
_tracer = tracer("auditmesh.processor")
log.addFilter(Throttle(10.0))
_PERMANENT_RETRY_MS = 2000
"""How long a caller waits before resending events whose write failed for a reason other than
availability (a bug, a schema problem): long enough not to hammer the store."""
_MAX_IN_FLIGHT = 64
"""Requests taken off one stream at a time."""


class EventWriter(Protocol):
    async def write(self, events: Iterable[pb.Event], *, urgent: bool = False) -> WriteStats: ...


class ProcessorServicer(pb_grpc.ProcessorServiceServicer):
    def __init__(
        self,
        store: EventWriter,
        versions: VersionBumper,
        *,
        max_writes: int,
        critical_writes: int,
        wedding_day_writes: int = 2,
        max_group_events: int = 500,
        digests: tuple[Digest, Digest] | None = None,
        observe: Callable[[Sequence[pb.Event], str], None] | None = None,
    ) -> None:
        """``digests``: the tamper-evidence chains of the bulk lane and of the urgent lanes (critical
        and wedding day share one: its appends are serialized), or None. ``observe``: threat
        detection, which sees each request's events as they arrive, before the write, with the
        traceparent of the request's span when it is traced; it must not block."""
        self._observe = observe
        self.written = 0
        self.failed = 0
        self.draining = asyncio.Event()
        self.write_us = Reservoir()
        self.critical_us = Reservoir()
        self.critical_transit_us = Reservoir()
        self.critical_write_us = Reservoir()

        def committer(urgent: bool, slots: int, write_us: Reservoir) -> GroupCommitter:
            write = functools.partial(store.write, urgent=urgent)
            digest = digests[urgent] if digests is not None else None
            return GroupCommitter(
                write,
                versions.bump,
                slots=slots,
                max_events=max_group_events,
                write_us=write_us,
                digest=digest,
                digest_alongside=urgent,
            )

        self._normal = committer(False, max_writes, self.write_us)
        self._critical = committer(True, critical_writes, self.critical_write_us)
        self.wedding_day_write_us = Reservoir()
        self._wedding_day = committer(True, wedding_day_writes, self.wedding_day_write_us)
        self._committers = {pb.LANE_CRITICAL: self._critical, pb.LANE_WEDDING_DAY: self._wedding_day}

    def stats(self) -> dict[str, Any]:
        """Counters and latency summaries: bulk and critical writes per group commit, and for
        the critical lane the time from ingest receiving an event to its write being confirmed,
        split into the transit to this process and the write."""
        return {
            "written": self.written,
            "failed": self.failed,
            "write_us": self.write_us.summary(),
            "critical_us": self.critical_us.summary(),
            "critical_transit_us": self.critical_transit_us.summary(),
            "critical_write_us": self.critical_write_us.summary(),
            "wedding_day_write_us": self.wedding_day_write_us.summary(),
        }

    def reset_latencies(self) -> None:
        for reservoir in (
            self.write_us,
            self.critical_us,
            self.critical_transit_us,
            self.critical_write_us,
            self.wedding_day_write_us,
        ):
            reservoir.reset()

    async def Process(  # type: ignore[override]  # noqa: N802 - gRPC method name; answers go out through context.write
        self, request_iterator: AsyncIterator[pb.ProcessRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # At most _MAX_IN_FLIGHT requests are taken off a stream at a time; the
        # committers write waiting requests highest lane first, and the rest of a backlog waits
        # in ingest's priority queue. A stall in the store must not stop the critical stream
        # from being read: its requests are small and are written in groups.
        answers = respond_concurrently(request_iterator, self._handle, max_in_flight=_MAX_IN_FLIGHT, stop=self.draining)
        await send_all(context, answers)

    async def _handle(self, req: pb.ProcessRequest) -> pb.ProcessResponse:
        attributes: dict[str, str | int] = {
            LANE: lane_name(req.lane),
            "auditmesh.events": len(req.events),
        }
        parent = context_of(req.traceparent)
        with _tracer.start_as_current_span(
            "processor.request", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            if self._observe is not None:
                self._observe(req.events, traceparent(span) if span.is_recording() else "")
            answer = await self._write(req)
            if not answer.ok:
                span.set_status(StatusCode.ERROR, answer.error[:200])
            return answer

    async def _write(self, req: pb.ProcessRequest) -> pb.ProcessResponse:
        critical = req.lane == pb.LANE_CRITICAL
        if critical and req.events:
            self.critical_transit_us.add(time.time_ns() // 1000 - req.events[0].received_at_us)
        # The committer bumps cache versions before answering: a query that follows the ack
        # must not be served a page cached earlier.
        outcome = await self._committers.get(req.lane, self._normal).submit(req)
        if outcome.error is not None:
            self.failed += len(req.events)
            error = outcome.error
            if isinstance(error, RetryableError):
                retry_after_ms = error.retry_after_ms
            else:
                # Events reach a processor only after ingest validated them, so a write the store
                # refuses is this service's fault, not the caller's: the write may have stored
                # part of the events, and only a resend completes them. Never a rejection.
                log.error("write of %d events failed: %s", len(req.events), str(error)[:500])
                retry_after_ms = _PERMANENT_RETRY_MS
            return pb.ProcessResponse(
                seq=req.seq, ok=False, error=str(error)[:500], retryable=True, retry_after_ms=retry_after_ms
            )
        if critical and req.events:
            self.critical_us.add(time.time_ns() // 1000 - req.events[0].received_at_us)
        self.written += len(req.events)
        return pb.ProcessResponse(seq=req.seq, ok=True, write_us=min(outcome.write_us, 2**32 - 1))
