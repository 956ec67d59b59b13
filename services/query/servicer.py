"""QueryService: Search streams pages newest first with signed keyset page tokens, through a
versioned Redis page cache; GetEvent finds one event by id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, set_span_in_context

from auditmesh.cache import PageCache
from auditmesh.errors import AuditError, InvalidRequest
from auditmesh.search import MAX_PAGES, Cursor, PageBounds, RowSource, SearchSpec, TokenSigner, page
from auditmesh.serving import abort_with, parse_message
from auditmesh.telemetry.tracing import context_of, tracer
from auditmesh.validation import Limits, check_id
from auditpb.v1 import audit_pb2 as pb

__all__ = ["CACHE_TRAILER", "EventReader", "QueryServicer"]

_tracer = tracer("auditmesh.query")
CACHE_TRAILER = "auditmesh-cache"
"""Trailing metadata of every Search: ``hit`` when each page came from the cache, else ``miss``."""


class EventReader(RowSource, Protocol):
    async def get(self, event_id: str) -> bytes | None: ...


class Scope(Protocol):
    async def restrict_search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SearchRequest: ...

    def visible(self, event: pb.Event) -> bool: ...


class QueryServicer:
    def __init__(
        self,
        store: EventReader,
        signer: TokenSigner,
        cache: PageCache,
        *,
        bounds: PageBounds,
        limits: Limits,
        scope: Scope | None = None,
    ) -> None:
        """``scope`` narrows searches to what the caller's token may read and hides other events."""
        self._scope = scope
        self._store = store
        self._signer = signer
        self.cache = cache
        self._bounds = bounds
        self._limits = limits
        # Cached pages were cut by these bounds: a process with other bounds must not share them.
        self._cache_stem = f"{signer.key_id}|{bounds.max_bytes}|{bounds.max_scanned}"

    async def Search(  # noqa: N802
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        # Not made current: the context must not stay attached across this generator's yields.
        span = _tracer.start_span(
            "query.search", context=context_of(context.invocation_metadata()), kind=SpanKind.SERVER
        )
        try:
            async for page_bytes in self._search(raw, context, set_span_in_context(span)):
                yield page_bytes
        finally:
            span.end()

    async def _search(
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any], trace_context: Context
    ) -> AsyncIterator[bytes]:
        try:
            request = parse_message(pb.SearchRequest, raw)
            if self._scope is not None:
                request = await self._scope.restrict_search(request, context)
            spec = SearchSpec.from_request(
                request, max_id_len=self._limits.max_id_len, max_text_len=self._limits.max_text_len
            )
            if request.max_pages > MAX_PAGES:
                raise InvalidRequest("max_pages", f"at most {MAX_PAGES}")
            cursor: Cursor | None = None
            if request.page_token:
                spec, cursor = self._signer.decode(
                    spec,
                    request.page_token,
                    explicit_start=request.HasField("start"),
                    explicit_end=request.HasField("end"),
                )
            all_cached = True
            pages = request.max_pages or 1
            for i in range(pages):
                raw, cursor, cached = await self._page(spec, cursor, more=i + 1 < pages, trace_context=trace_context)
                all_cached = all_cached and cached
                context.set_trailing_metadata(((CACHE_TRAILER, "hit" if all_cached else "miss"),))
                yield raw
                if cursor is None:
                    return
        except AuditError as exc:
            await abort_with(context, exc)

    async def _page(
        self, spec: SearchSpec, cursor: Cursor | None, *, more: bool, trace_context: Context | None = None
    ) -> tuple[bytes, Cursor | None, bool]:
        """One serialized SearchPage, the cursor after it, and whether it came from the cache
        (which it does only when it is current). A cached page's cursor is decoded only when
        ``more`` pages follow in this call; otherwise it is returned as None."""
        identity = f"{self._cache_stem}|{spec.identity(cursor)}"
        with _tracer.start_as_current_span("cache.lookup", context=trace_context) as lookup:
            page_key, cached = await self.cache.lookup(spec.scope, spec.key, spec.buckets(cursor), identity)
            lookup.set_attribute("auditmesh.cache_hit", cached is not None)
        if cached is not None:
            if not more:
                return cached, None, True
            following = pb.SearchPage.FromString(cached).next_page_token
            return cached, (self._signer.decode(spec, following)[1] if following else None), True
        with _tracer.start_as_current_span("store.read", context=trace_context) as read:
            rows, after = await page(self._store, spec, cursor, self._bounds)
            read.set_attribute("auditmesh.events", len(rows))
        out = pb.SearchPage(events=[pb.Event.FromString(r.payload) for r in rows])
        if after is not None:
            out.next_page_token = self._signer.encode(spec, after)
        raw = out.SerializeToString()
        with _tracer.start_as_current_span("cache.store", context=trace_context):
            await self.cache.store(page_key, raw)
        return raw, after, False

    async def GetEvent(  # noqa: N802
        self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Event:
        try:
            request = parse_message(pb.GetEventRequest, raw)
            if not request.event_id:
                raise InvalidRequest("event_id", "required")
            problem = check_id(request.event_id, self._limits.max_id_len)
            if problem:
                raise InvalidRequest("event_id", problem)
            parent = context_of(context.invocation_metadata())
            with _tracer.start_as_current_span("query.get_event", context=parent, kind=SpanKind.SERVER):
                with _tracer.start_as_current_span("store.get"):
                    payload = await self._store.get(request.event_id)
        except AuditError as exc:
            await abort_with(context, exc)
        event = pb.Event.FromString(payload) if payload is not None else None
        if event is None or (self._scope is not None and not self._scope.visible(event)):
            # Outside the caller's scope is "not found" too: a scope leaks no event's existence.
            # The id was checked above: at most max_id_len printable characters are echoed.
            await context.abort(grpc.StatusCode.NOT_FOUND, f"event_id: no event {request.event_id!r}")
            raise AssertionError("unreachable")
        return event
