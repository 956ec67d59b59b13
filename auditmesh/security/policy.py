"""What a caller may write and read, applied by the ingest and query servicers to the caller
the interceptor made current (:func:`auditmesh.security.auth.current`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from auditmesh.errors import Overloaded
from auditmesh.security.auth import current
from auditmesh.security.config import SecurityConfig
from auditmesh.security.ratelimit import RateLimiter
from auditmesh.security.redaction import Redactor
from auditpb.v1 import audit_pb2 as pb

__all__ = ["IngestPolicy", "ReadScope"]


class IngestPolicy:
    """Per batch: the source restriction of the caller's token, its event rate (P0 events from an
    allowance of their own) and redaction of the events that will be stored."""

    def __init__(self, cfg: SecurityConfig) -> None:
        self._events = RateLimiter(cfg.events_per_s, cfg.events_burst)
        self._critical = RateLimiter(cfg.critical_events_per_s, cfg.critical_events_burst)
        self._redactor = Redactor(cfg.redact_keys, cfg.redact_pattern, cards=cfg.redact_cards)

    def admit(self, batch: pb.EventBatch) -> dict[int, pb.Rejection]:
        """The events the caller may not write (by index, as rejections); raises
        :class:`Overloaded` (retry info: when its bucket will have room) when the caller is over
        its rate. A batch's P0 events are charged to the critical allowance, the rest to the
        normal one; a batch is admitted or refused whole."""
        principal = current()
        if principal is None:
            return {}
        refused: dict[int, pb.Rejection] = {}
        critical = normal = 0
        for index, ev in enumerate(batch.events):
            if not principal.may_write_as(ev.source_service):
                refused[index] = pb.Rejection(
                    index=index,
                    event_id=ev.event_id[:128],
                    field="source_service",
                    reason=f"the token of {principal.subject[:64]!r} may not write as {ev.source_service[:64]!r}",
                )
            elif ev.severity == pb.P0_CRITICAL:
                critical += 1
            else:
                normal += 1
        for limiter, count, what in ((self._events, normal, "events"), (self._critical, critical, "P0 events")):
            if count:
                wait_ms = limiter.take(principal.subject, count)
                if wait_ms:
                    raise Overloaded(f"{principal.subject!r} is over its rate of {limiter.rate:g} {what}/s", wait_ms)
        return refused

    def redact(self, events: Iterable[pb.Event]) -> None:
        if self._redactor.active:
            for ev in events:
                self._redactor.redact(ev)


class ReadScope:
    """What the caller's token lets it read: searches are narrowed or refused before they run
    (a page token is bound to the search it came from, so it cannot widen one), and single
    events outside the scope look exactly like events that do not exist."""

    async def restrict_search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SearchRequest:
        principal = current()
        if principal is None or principal.reads_everything:
            return request
        if request.wedding_id and request.wedding_id in principal.weddings:
            return request
        if principal.orgs:
            if request.organization_id in principal.orgs:
                return request
            if not request.organization_id and len(principal.orgs) == 1:
                narrowed = pb.SearchRequest()
                narrowed.CopyFrom(request)
                narrowed.organization_id = next(iter(principal.orgs))
                return narrowed
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "organization_id: give one of the organizations the token may read",
            )
        what = "wedding_id" if request.wedding_id else "user_id"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{what}: outside the token's scope")
        raise AssertionError("unreachable")

    def visible(self, event: pb.Event) -> bool:
        principal = current()
        return principal is None or principal.may_see(event.wedding_id, event.organization_id)
