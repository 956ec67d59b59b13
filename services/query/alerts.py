"""AlertService (protos/auditpb/v1/alerts.proto) beside QueryService: the live feed from Redis
and stored alerts from Cassandra (:mod:`auditmesh.detection`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from auditmesh.detection.alerts import AlertStore, BadPageToken, matches
from auditmesh.detection.feed import AlertFeed, is_update
from auditmesh.security.auth import current
from auditmesh.security.tokens import Principal
from auditmesh.telemetry.tracing import context_of, tracer
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc

__all__ = ["AlertServicer"]

_MAX_ID = 128
_tracer = tracer("auditmesh.query")


def _check(f: apb.AlertFilter) -> str:
    for name in ("wedding_id", "organization_id", "rule"):
        if len(getattr(f, name)) > _MAX_ID:
            return f"filter.{name}: longer than {_MAX_ID} characters"
    return ""


def _narrowed(principal: Principal | None, f: apb.AlertFilter) -> apb.AlertFilter | str:
    """The filter a caller's token allows (narrowed to its one organization when it names
    none), or why it is refused. Alerts outside the scope are also dropped one by one, so that
    neither a filter nor a page token can widen it."""
    if principal is None or principal.reads_everything:
        return f
    if f.wedding_id and f.wedding_id in principal.weddings:
        return f
    if f.organization_id and f.organization_id in principal.orgs:
        return f
    if not f.wedding_id and not f.organization_id and len(principal.orgs) == 1:
        narrowed = apb.AlertFilter()
        narrowed.CopyFrom(f)
        narrowed.organization_id = next(iter(principal.orgs))
        return narrowed
    if f.wedding_id or f.organization_id:
        return "filter: outside the token's scope"
    return "filter: give a wedding_id or organization_id the token may read"


async def _admitted(
    principal: Principal | None, f: apb.AlertFilter, context: grpc.aio.ServicerContext[Any, Any]
) -> apb.AlertFilter:
    """The filter to apply, or the call ends: INVALID_ARGUMENT for a malformed filter,
    PERMISSION_DENIED for one outside the caller's scope."""
    problem = _check(f)
    if problem:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
    wanted = _narrowed(principal, f)
    if isinstance(wanted, str):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, wanted)
        raise AssertionError("unreachable")
    return wanted


def _visible(principal: Principal | None, alert: apb.Alert) -> bool:
    return principal is None or principal.may_see(alert.wedding_id, alert.organization_id)


def _delivery_span(alert: apb.Alert) -> None:
    """``alert.deliver`` in the trace of the request that carried the alert's trigger, when it was
    traced: from ingest's receipt of the triggering event to this handoff to a caller."""
    if not alert.traceparent or is_update(alert) or not alert.trigger_received_at_us:
        return
    span = _tracer.start_span(
        "alert.deliver",
        context=context_of(alert.traceparent),
        kind=SpanKind.PRODUCER,
        start_time=alert.trigger_received_at_us * 1000,
        attributes={"auditmesh.rule": alert.rule, "auditmesh.alert_id": alert.alert_id},
    )
    span.end()


class AlertServicer(apb_grpc.AlertServiceServicer):
    def __init__(self, store: AlertStore, feed: AlertFeed) -> None:
        self._store = store
        self._feed = feed

    async def SubscribeAlerts(  # noqa: N802 - gRPC method name
        self, request: apb.SubscribeAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[apb.Alert]:
        principal = current()
        wanted = await _admitted(principal, request.filter, context)
        subscription = self._feed.join()
        try:
            # Headers go out once this caller is on the feed: a client that waits for them knows
            # every alert published from then on reaches it.
            await context.send_initial_metadata((("x-auditmesh-subscribed", "1"),))
            while True:
                alert = await subscription.get()
                if matches(alert, wanted) and _visible(principal, alert):
                    self._feed.handed(alert)
                    _delivery_span(alert)
                    yield alert
        finally:
            self._feed.leave(subscription)

    async def ListAlerts(  # noqa: N802 - gRPC method name
        self, request: apb.ListAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.ListAlertsResponse:
        principal = current()
        wanted = await _admitted(principal, request.filter, context)
        since = request.since.ToMilliseconds() if request.HasField("since") else 0
        until = request.until.ToMilliseconds() if request.HasField("until") else 0
        try:
            page = await self._store.list(
                wanted,
                since_ms=since,
                until_ms=until,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        except BadPageToken as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"alerts not readable: {str(exc)[:200]}")
        alerts = [a for a in page.alerts if _visible(principal, a)]
        return apb.ListAlertsResponse(alerts=alerts, next_page_token=page.next_page_token)
