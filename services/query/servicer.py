"""QueryService: Search streams pages newest first with signed keyset page tokens; GetEvent
finds one event by id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from auditmesh.errors import AuditError, InvalidRequest
from auditmesh.search import MAX_PAGES, Cursor, RowSource, SearchSpec, TokenSigner, pages
from auditmesh.serving import abort_with
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

__all__ = ["EventReader", "QueryServicer"]


class EventReader(RowSource, Protocol):
    async def get(self, event_id: str) -> bytes | None: ...


class QueryServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, store: EventReader, signer: TokenSigner) -> None:
        self._store = store
        self._signer = signer

    async def Search(  # noqa: N802
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SearchPage]:
        try:
            spec = SearchSpec.from_request(request)
            if request.max_pages > MAX_PAGES:
                raise InvalidRequest("max_pages", f"at most {MAX_PAGES}")
            cursor: Cursor | None = None
            if request.page_token:
                explicit = request.HasField("start") or request.HasField("end")
                spec, cursor = self._signer.decode(spec, request.page_token, explicit_range=explicit)
            budget = request.max_pages or 1
            async for rows, after in pages(self._store, spec, cursor):
                page = pb.SearchPage(events=[pb.Event.FromString(r.payload) for r in rows])
                if after is not None:
                    page.next_page_token = self._signer.encode(spec, after)
                yield page
                budget -= 1
                if budget == 0 or after is None:
                    return
        except AuditError as exc:
            await abort_with(context, exc)

    async def GetEvent(  # noqa: N802
        self, request: pb.GetEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Event:
        try:
            if not request.event_id:
                raise InvalidRequest("event_id", "required")
            payload = await self._store.get(request.event_id)
        except AuditError as exc:
            await abort_with(context, exc)
        if payload is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"event_id: no event {request.event_id!r}")
            raise AssertionError("unreachable")
        return pb.Event.FromString(payload)
