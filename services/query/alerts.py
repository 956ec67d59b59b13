"""AlertService (protos/auditpb/v1/alerts.proto) beside QueryService: the live feed from Redis
and stored alerts from Cassandra (:mod:`auditmesh.detection`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from auditmesh.detection.alerts import AlertStore, BadPageToken, matches
from auditmesh.detection.feed import AlertFeed
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc

__all__ = ["AlertServicer"]

_MAX_ID = 128


def _check(f: apb.AlertFilter) -> str:
    for name in ("wedding_id", "organization_id", "rule"):
        if len(getattr(f, name)) > _MAX_ID:
            return f"filter.{name}: longer than {_MAX_ID} characters"
    return ""


class AlertServicer(apb_grpc.AlertServiceServicer):
    def __init__(self, store: AlertStore, feed: AlertFeed) -> None:
        self._store = store
        self._feed = feed

    async def SubscribeAlerts(  # noqa: N802 - gRPC method name
        self, request: apb.SubscribeAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[apb.Alert]:
        problem = _check(request.filter)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        queue = self._feed.join()
        try:
            # Headers go out once this caller is on the feed: a client that waits for them knows
            # every alert published from then on reaches it.
            await context.send_initial_metadata((("x-auditmesh-subscribed", "1"),))
            while True:
                alert = await queue.get()
                if matches(alert, request.filter):
                    yield alert
        finally:
            self._feed.leave(queue)

    async def ListAlerts(  # noqa: N802 - gRPC method name
        self, request: apb.ListAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.ListAlertsResponse:
        problem = _check(request.filter)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        since = request.since.ToMilliseconds() if request.HasField("since") else 0
        until = request.until.ToMilliseconds() if request.HasField("until") else 0
        try:
            page = await self._store.list(
                request.filter,
                since_ms=since,
                until_ms=until,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        except BadPageToken as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"alerts not readable: {str(exc)[:200]}")
        return apb.ListAlertsResponse(alerts=page.alerts, next_page_token=page.next_page_token)
