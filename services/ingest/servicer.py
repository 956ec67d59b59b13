"""IngestService: validates each event, prioritises, routes to processors, and acknowledges a
batch only when a processor has made its valid events durable.

Requests are parsed here (the handlers take raw bytes) so that a message that is not an
EventBatch is INVALID_ARGUMENT with the decode error, not an opaque INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context, use_span

from auditmesh.errors import InvalidRequest, Overloaded, RetryableError, StoreUnavailable
from auditmesh.memory import trim_soon
from auditmesh.priority import CalendarSnapshot, assign_priority
from auditmesh.serving import ReadBudget, abort_with, respond_concurrently, send_all
from auditmesh.telemetry.tracing import LANE, context_of, lane_name, traceparent, tracer
from auditmesh.validation import Limits, validate_slices
from auditpb.v1 import audit_pb2 as pb
from services.ingest.forward import Forward
from services.ingest.router import Router

__all__ = ["IngestServicer", "IngestStats"]

SERVICE = "auditpb.v1.IngestService"
log = logging.getLogger("auditmesh.ingest")
_tracer = tracer("auditmesh.ingest")
_SLICE_EVENTS = 256
"""Events validated, or sorted into lanes, between two turns of the event loop."""


class IngestStats:
    """Counters since start, read by load reports and ``auditmesh status``."""

    def __init__(self) -> None:
        self.batches = 0
        self.accepted = 0
        self.rejected = 0
        self.retried = 0
        self.refused = 0
        self.client_dropped = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class BatchPolicy(Protocol):
    def admit(self, batch: pb.EventBatch) -> dict[int, pb.Rejection]: ...

    def redact(self, events: Iterable[pb.Event]) -> None: ...


def _index(rejection: pb.Rejection) -> int:
    return rejection.index


def _wire_size(item: tuple[int, pb.EventBatch]) -> int:
    return item[0]


def _parse(raw: bytes) -> pb.EventBatch:
    try:
        batch = pb.EventBatch.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequest("EventBatch", f"malformed message: {exc}") from None
    if not batch.events:
        raise InvalidRequest("events", "empty batch")
    return batch


class IngestServicer:
    def __init__(
        self,
        router: Router,
        limits: Limits,
        calendar: Callable[[], CalendarSnapshot],
        *,
        admit_wait_s: float,
        stream_read_ahead_bytes: int = 16 * 1024 * 1024,
        max_read_bytes: int = 96 * 1024 * 1024,
        policy: BatchPolicy | None = None,
    ) -> None:
        """``policy`` checks each batch against its caller's token and redacts what is stored."""
        self._policy = policy
        self._router = router
        self._limits = limits
        self._calendar = calendar
        self._admit_wait_s = admit_wait_s
        self._stream_read_ahead_bytes = stream_read_ahead_bytes
        self.read_budget = ReadBudget(max_read_bytes)
        self.stats = IngestStats()
        self.draining = asyncio.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        serialize = pb.BatchAck.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Stream": grpc.stream_stream_rpc_method_handler(self.Stream, None, serialize),
                "Submit": grpc.unary_unary_rpc_method_handler(self.Submit, None, serialize),
            },
        )

    async def Submit(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> pb.BatchAck:  # noqa: N802
        too_big = self._too_big(len(raw))  # refused before it is parsed
        if too_big:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big)
        try:
            batch = _parse(raw)
        except InvalidRequest as exc:
            await abort_with(context, exc)
        too_large = self._too_large(batch, len(raw))
        if too_large:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large)
        budget = self.read_budget
        try:
            await asyncio.wait_for(budget.wait_for_room(), self._admit_wait_s)
        except TimeoutError:
            await abort_with(context, Overloaded(f"ingest holds {budget.used} bytes of batches", 500))
        budget.take(len(raw))
        try:
            parent = context_of(batch.traceparent) or context_of(context.invocation_metadata())
            return await self._ingest(batch, parent)
        except RetryableError as exc:
            await abort_with(context, exc)
        except Exception as exc:
            log.exception("batch %s failed", batch.batch_id)
            await abort_with(context, exc)
        finally:
            budget.give(len(raw))

    async def Stream(  # noqa: N802
        self, raw_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        async def parsed() -> AsyncIterator[tuple[int, pb.EventBatch]]:
            reported = 0  # the client's drop counter is cumulative per stream
            async for raw in raw_iterator:
                batch = _parse(raw)
                if batch.client_dropped > reported:
                    self.stats.client_dropped += batch.client_dropped - reported
                    reported = batch.client_dropped
                yield len(raw), batch

        # A call the caller cancelled (or that outlived its deadline) stops its work at once and
        # gives back its memory: nobody will read its acks, and resends are the caller's business.
        ended = asyncio.Event()

        def on_end(_: object) -> None:
            ended.set()
            trim_soon()

        context.add_done_callback(on_end)
        answers = respond_concurrently(
            parsed(),
            self._answer,
            max_in_flight=128,
            stop=self.draining,
            budgets=(ReadBudget(self._stream_read_ahead_bytes), self.read_budget),
            request_size=_wire_size,
            answer_size=pb.BatchAck.ByteSize,
            ended=ended,
        )
        try:
            await send_all(context, answers)
        except InvalidRequest as exc:
            await abort_with(context, exc)

    def _too_big(self, size: int) -> str:
        """Why a message of ``size`` bytes is refused, or ""."""
        if size <= self._limits.max_message_bytes:
            return ""
        self.stats.refused += 1
        return f"batch: {size} bytes in one message, limit {self._limits.max_message_bytes}"

    def _too_large(self, batch: pb.EventBatch, size: int) -> str:
        """Why a batch is refused as a whole (RESOURCE_EXHAUSTED, or a REFUSED ack), or ""."""
        too_big = self._too_big(size)
        if too_big:
            return too_big
        limit = self._limits.max_batch_events
        if len(batch.events) <= limit:
            return ""
        self.stats.refused += 1
        return f"events: {len(batch.events)} events in one batch, limit {limit}"

    async def _answer(self, item: tuple[int, pb.EventBatch]) -> pb.BatchAck:
        size, batch = item
        too_large = self._too_large(batch, size)
        if too_large:
            return pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_REFUSED, message=too_large)
        try:
            return await self._ingest(batch, context_of(batch.traceparent))
        except RetryableError as exc:
            return pb.BatchAck(
                batch_id=batch.batch_id,
                status=pb.ACK_STATUS_RETRY,
                message=str(exc),
                retry_after_ms=exc.retry_after_ms,
            )
        except Exception:
            # Never leave a batch unanswered: resending is safe, writes are idempotent.
            log.exception("batch %s failed", batch.batch_id)
            return pb.BatchAck(
                batch_id=batch.batch_id, status=pb.ACK_STATUS_RETRY, message="internal error", retry_after_ms=1000
            )

    async def _send(self, req: Forward) -> pb.ProcessResponse:
        """Send one lane's events within that lane's in-flight budget."""
        attributes: dict[str, str | int] = {
            LANE: lane_name(req.lane),
            "auditmesh.events": req.count,
        }
        with _tracer.start_as_current_span("ingest.forward", kind=SpanKind.CLIENT, attributes=attributes) as span:
            req.traceparent = traceparent(span)
            budget = self._router.budget_for(req.lane)
            await budget.acquire(req.count, req.size, self._admit_wait_s)
            try:
                return await self._router.send(req)
            finally:
                budget.release(req.count, req.size)

    async def _ingest(self, batch: pb.EventBatch, parent: Context | None = None) -> pb.BatchAck:
        """Validate, prioritise and forward one batch; one ``ingest.batch`` span (started when the
        lanes are known, so the sampler can always keep critical ones, but timed from receipt)."""
        received_ns = time.time_ns()
        self.stats.batches += 1
        events = batch.events
        refused = self._policy.admit(batch) if self._policy is not None else {}
        # A large batch is validated and sorted into lanes a slice at a time, with the loop
        # free in between: a P0 event arriving meanwhile waits for one slice, not for the batch.
        sliced = len(events) > _SLICE_EVENTS
        valid: list[int] = []
        rejected: list[pb.Rejection] = []
        for part_valid, part_rejected in validate_slices(events, self._limits, _SLICE_EVENTS):
            valid += part_valid
            rejected += part_rejected
            if sliced:
                await asyncio.sleep(0)
        if refused:
            valid = [i for i in valid if i not in refused]
            rejected = sorted([*(r for r in rejected if r.index not in refused), *refused.values()], key=_index)
        self.stats.rejected += len(rejected)
        if not valid:
            return pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_OK, rejected=rejected)
        if self._policy is not None:
            self._policy.redact(events[i] for i in valid)
        cal = self._calendar()
        now_us = received_ns // 1000
        lanes: dict[int, list[pb.Event]] = {}
        for begin in range(0, len(valid), _SLICE_EVENTS):
            if begin:
                await asyncio.sleep(0)
            for index in valid[begin : begin + _SLICE_EVENTS]:
                ev = events[index]
                ev.received_at_us = now_us
                lane = assign_priority(ev, cal)
                same = lanes.get(lane)
                if same is None:
                    lanes[lane] = [ev]
                else:
                    same.append(ev)
        order = sorted(lanes, reverse=True)
        span = _tracer.start_span(
            "ingest.batch",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=received_ns,
            attributes={
                LANE: lane_name(order[0]),
                "auditmesh.events": len(events),
                "auditmesh.rejected": len(rejected),
            },
        )
        if span.is_recording():
            trace_id = f"{span.get_span_context().trace_id:032x}"
            for lane in order:
                for ev in lanes[lane]:
                    ev.trace_id = trace_id
            span.set_attribute("auditmesh.weddings", len({events[i].wedding_id for i in valid}))
            span.set_attribute("auditmesh.lanes", [lane_name(lane) for lane in order])
            handle = _tracer.start_span("ingest.handle", context=set_span_in_context(span), start_time=received_ns)
            handle.end()
        # Each event is encoded here, once, as it is final (see Forward).
        ordered: list[Forward] = []
        for lane in order:
            req = Forward(lane)
            same = lanes[lane]
            for begin in range(0, len(same), _SLICE_EVENTS):
                if begin:
                    await asyncio.sleep(0)
                for ev in same[begin : begin + _SLICE_EVENTS]:
                    req.add(ev)
            ordered.append(req)
        with use_span(span, end_on_exit=False):
            answers = await asyncio.gather(*(self._send(r) for r in ordered), return_exceptions=True)
        failed = next((a for a in answers if isinstance(a, BaseException) or not a.ok), None)
        del answers
        if failed is not None:
            span.set_status(StatusCode.ERROR, str(failed if isinstance(failed, BaseException) else failed.error)[:200])
        span.end()
        if failed is not None:
            # Raising an exception held in this frame's locals would make a reference cycle
            # (exception -> traceback -> this frame -> exception) that keeps the whole batch
            # alive until the cyclic collector runs: under a burst of refused batches, hundreds
            # of MB. A fresh exception, with the old one dropped, is freed at once. Valid events
            # whose write failed are never reported as rejected: the write may have stored part
            # of them, and only the caller's resend completes them.
            failure: BaseException
            if isinstance(failed, BaseException):
                failure = failed
            else:
                failure = StoreUnavailable(failed.error, failed.retry_after_ms or 200)
            del failed
            if isinstance(failure, RetryableError):
                self.stats.retried += len(valid)
                failure = type(failure)(str(failure), failure.retry_after_ms)
            try:
                raise failure from None
            finally:
                del failure
        accepted = len(valid)
        self.stats.accepted += accepted
        ack = pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_OK, accepted=accepted, rejected=rejected)
        wedding_day = lanes.get(pb.LANE_WEDDING_DAY)
        if wedding_day is not None:  # the caller may batch these weddings' events apart from now on
            ack.wedding_day.extend(sorted({ev.wedding_id for ev in wedding_day}))
        return ack
