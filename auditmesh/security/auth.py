"""The server side of tokens: an interceptor that authenticates and authorises every RPC, and
the checks the servicers apply to what a caller may write and read.

The interceptor verifies the bearer token of every call (health checks excepted), checks the
scope the method needs, charges per-call rate limits, and makes the caller's
:class:`~auditmesh.security.tokens.Principal` current for the handler (:func:`current`).
UNAUTHENTICATED: no token, a malformed, expired or wrongly signed one. PERMISSION_DENIED: a
valid token without the method's scope.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from auditmesh.security.ratelimit import RateLimiter
from auditmesh.security.tokens import InvalidToken, Principal, TokenVerifier

__all__ = ["METHOD_SCOPES", "AuthInterceptor", "abort_rate_limited", "current", "token_of"]

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("auditmesh_principal", default=None)

METHOD_SCOPES: Mapping[str, str] = {
    "/auditpb.v1.IngestService/": "ingest:write",
    "/auditpb.v1.QueryService/": "query:read",
    "/auditpb.v1.AlertService/": "alerts:read",
    "/grpc.reflection.": "",
}
"""The scope each service's methods need (by method prefix); "" means any valid token. A
method matched by none needs ``admin``; health checks need nothing."""
_OPEN = ("/grpc.health.v1.Health/",)


def current() -> Principal | None:
    """The caller of the RPC being handled; None when the service runs without tokens."""
    return _current.get()


def token_of(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _scope_for(method: str) -> str:
    for prefix, scope in METHOD_SCOPES.items():
        if method.startswith(prefix):
            return scope
    return "admin"


async def abort_rate_limited(context: grpc.aio.ServicerContext[Any, Any], message: str, retry_ms: int) -> None:
    """End the call with RESOURCE_EXHAUSTED and google.rpc.RetryInfo."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(retry_ms)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    status.details.add().Pack(info)
    await context.abort_with_status(rpc_status.to_status(status))


def _denied(handler: grpc.RpcMethodHandler, deny: Callable[[Any], Awaitable[None]]) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends every call with ``deny``."""

    async def unary(request: Any, context: Any) -> Any:
        await deny(context)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await deny(context)
        yield  # pragma: no cover - makes this an async generator

    return _same_kind(handler, unary, streaming)


def _same_kind(
    handler: grpc.RpcMethodHandler, unary: Callable[..., Any], streaming: Callable[..., Any]
) -> grpc.RpcMethodHandler:
    ser, de = handler.response_serializer, handler.request_deserializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(unary, de, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, de, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, de, ser)
    return grpc.unary_unary_rpc_method_handler(unary, de, ser)


def _as(principal: Principal, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with ``principal`` current while it runs."""
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def unary(request: Any, context: Any) -> Any:
        _current.set(principal)  # each call runs in a task of its own: nothing to reset
        return await inner(request, context)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        _current.set(principal)
        if inspect.isasyncgenfunction(inner) or inspect.isasyncgenfunction(getattr(inner, "__func__", None)):
            async for item in inner(request, context):
                yield item
        else:
            await inner(request, context)

    return _same_kind(handler, unary, streaming)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call with its bearer token and checks the method's scope; with
    ``call_limits``, also charges one unit per call to the caller's subject."""

    def __init__(self, verifier: TokenVerifier, call_limits: RateLimiter | None = None) -> None:
        self._verifier = verifier
        self._limits = call_limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_OPEN):
            return handler
        token = token_of(handler_call_details.invocation_metadata)
        if token is None:
            return _denied(handler, _abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required"))
        try:
            principal = self._verifier.verify(token)
        except InvalidToken as exc:
            return _denied(handler, _abort(grpc.StatusCode.UNAUTHENTICATED, str(exc)))
        scope = _scope_for(method)
        if scope and not principal.has(scope):
            message = f"the token of {principal.subject!r} lacks scope {scope}"
            return _denied(handler, _abort(grpc.StatusCode.PERMISSION_DENIED, message))
        if self._limits is not None and scope:
            wait_ms = self._limits.take(principal.subject)
            if wait_ms:
                message = f"{principal.subject!r} is over its rate of {self._limits.rate:g} calls/s"

                async def limited(context: Any) -> None:
                    await abort_rate_limited(context, message, wait_ms)

                return _denied(handler, limited)
        return _as(principal, handler)


def _abort(code: grpc.StatusCode, message: str) -> Callable[[Any], Awaitable[None]]:
    async def deny(context: Any) -> None:
        await context.abort(code, message)

    return deny
