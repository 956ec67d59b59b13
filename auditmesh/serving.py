"""What every service process shares: server construction with health checking and reflection,
the bidi "read many, answer as each completes" loop, error-to-status mapping, and a main loop
that stops gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import uvloop
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_status import rpc_status

from auditmesh.errors import AuditError, InvalidRequest, Overloaded, PermanentError, RetryableError
from auditmesh.logthrottle import Throttle
from auditmesh.telemetry import tracing
from auditpb.v1 import audit_pb2  # noqa: F401  (registers auditpb in the pool reflection serves)

__all__ = [
    "ReadBudget",
    "abort_with",
    "create_server",
    "parse_message",
    "respond_concurrently",
    "retry_after_ms",
    "run_service",
    "send_all",
    "status_of",
]

log = logging.getLogger("auditmesh")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def create_server(
    handlers: Iterable[grpc.GenericRpcHandler],
    service_names: Iterable[str],
    *,
    port: int,
    host: str = "127.0.0.1",
    max_message_bytes: int = 8 * 1024 * 1024,
    reuse_port: bool = False,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    """A server with the given handlers plus gRPC health checking and reflection, bound to port;
    TLS with ``credentials`` (see :func:`auditmesh.security.serving.server_security`)."""
    server = grpc.aio.server(
        interceptors=list(interceptors) or None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    server.add_generic_rpc_handlers(tuple(handlers))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        _MethodAwareReflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME]), server
    )
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server, bound, health_servicer


class _MethodAwareReflection(ReflectionServicer):  # type: ignore[misc]
    """Server reflection that also resolves method symbols ("pkg.Service.Method").

    grpcio-reflection looks symbols up in the descriptor pool, which knows services but not
    their methods (grpc/grpc#34743), so ghz and ``grpcurl describe`` of a method fail. A method
    name resolves to the file of its service.
    """

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        service, _, method = fully_qualified_name.rpartition(".")
        if service:
            try:
                descriptor = self._pool.FindServiceByName(service)
            except KeyError:
                descriptor = None
            if descriptor is not None and method in descriptor.methods_by_name:
                fully_qualified_name = service
        return super()._file_containing_symbol(request, fully_qualified_name)


M = TypeVar("M", bound=Message)


def parse_message(kind: type[M], raw: bytes) -> M:
    """``raw`` parsed as a ``kind``; a malformed message is :class:`InvalidRequest` naming the type."""
    try:
        return kind.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(kind.DESCRIPTOR.name, f"malformed message: {exc}") from None


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, int]:
    """The gRPC status code, message and retry delay (ms, 0 for none) for an error."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), 0
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_ms
    if isinstance(exc, RetryableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_ms
    if isinstance(exc, PermanentError | AuditError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc), 0
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", 0


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """End the call with the status for ``exc``; retryable errors carry google.rpc.RetryInfo."""
    code, message, retry_ms = status_of(exc)
    if retry_ms:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(retry_ms)
        status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
        status.details.add().Pack(info)
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(code, message)
    raise AssertionError("unreachable")


def retry_after_ms(error: grpc.RpcError) -> int:
    """The RetryInfo delay a server attached to an error, or 0."""
    if not isinstance(error, grpc.Call):
        return 0
    status = rpc_status.from_call(error)
    if status is None:
        return 0
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return int(info.retry_delay.ToMilliseconds())
    return 0


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class ReadBudget:
    """Bytes read off request streams and not yet answered (requests and their answers).

    One per stream bounds what a single caller can make a process hold; one shared by every
    stream of a process bounds the total. A stream reads its next message only while its
    budgets have room, so a full budget pushes back on the callers through HTTP/2 flow control.
    A message is admitted while the budget is below its bound, so the bound can be passed by
    at most one message per stream.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    async def wait_for_room(self) -> None:
        while self.used >= self.max_bytes:
            self._room.clear()
            await self._room.wait()

    def take(self, size: int) -> None:
        self.used += size
        if self.used >= self.max_bytes:
            self._room.clear()

    def give(self, size: int) -> None:
        self.used -= size
        if self.used < self.max_bytes:
            self._room.set()


async def respond_concurrently(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], Awaitable[Resp | None]],
    *,
    max_in_flight: int = 64,
    stop: asyncio.Event | None = None,
    budgets: Sequence[ReadBudget] = (),
    request_size: Callable[[Req], int] | None = None,
    answer_size: Callable[[Resp], int] | None = None,
    ended: asyncio.Event | None = None,
) -> AsyncGenerator[Resp, None]:
    """Read requests while earlier ones are still being handled; yield each answer when ready.

    A request holds its place from the moment it is read until its answer has been taken by the
    consumer (for a gRPC stream: written to the peer): at most ``max_in_flight`` requests, and,
    with ``budgets``, their sizes and their answers' sizes (``request_size``, ``answer_size``)
    within every budget. Past that the stream is not read, which pushes back on the sender
    through HTTP/2 flow control, also when the sender does not read its answers. When ``stop``
    is set (graceful shutdown) no further request is read; the answers under way are sent and
    the stream ends, so the peer resends nothing that was answered. Errors reading the stream
    end it after the answers already under way have been sent. When ``ended`` is set (the call
    is over: cancelled by the peer, or its deadline passed) the work under way is cancelled and
    the budgets given back at once, without waiting for the generator to be closed.
    """
    answers: asyncio.Queue[tuple[Resp | None, int]] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()
    reader_error: list[BaseException] = []
    held = [0]  # bytes this stream holds of the budgets

    slots = asyncio.Semaphore(max_in_flight)

    def take(size: int) -> None:
        if held[0] < 0:
            return
        held[0] += size
        for budget in budgets:
            budget.take(size)

    def give(size: int) -> None:
        if held[0] < 0:
            return  # the stream has ended and given everything back
        held[0] -= size
        for budget in budgets:
            budget.give(size)

    async def one(request: Req, size: int) -> None:
        try:
            answer = await handle(request)
        except BaseException as exc:
            give(size)
            slots.release()
            if not isinstance(exc, asyncio.CancelledError):
                # A handler must answer every request; one that raised leaves its peer waiting
                # for its own timeout, so say so.
                log.exception("a request of a stream got no answer")
            raise
        if answer is not None and answer_size is not None:
            extra = answer_size(answer)
            take(extra)
            size += extra
        answers.put_nowait((answer, size))

    async def next_request(iterator: AsyncIterator[Req]) -> Req:
        if stop is None:
            return await anext(iterator)
        reading = asyncio.ensure_future(anext(iterator))
        # A read given up on (at a stop, or cancelled with the call or at exit) may still end
        # with the stream's own error, as gRPC ends a request stream: nobody awaits it then.
        reading.add_done_callback(_retrieve)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            abandoned = not reading.done()
            if abandoned:
                reading.cancel()
        if abandoned:
            raise StopAsyncIteration
        return reading.result()

    async def reader() -> None:
        iterator = aiter(requests)
        try:
            while True:
                await slots.acquire()
                for budget in budgets:
                    await budget.wait_for_room()
                try:
                    request = await next_request(iterator)
                except StopAsyncIteration:
                    slots.release()
                    break
                size = request_size(request) if request_size is not None else 0
                take(size)
                task = asyncio.ensure_future(one(request, size))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except BaseException as exc:  # noqa: BLE001 - surfaced after in-flight answers
            reader_error.append(exc)
        finally:
            if pending:
                await asyncio.gather(*list(pending), return_exceptions=True)
            answers.put_nowait((None, -1))

    read_task = asyncio.ensure_future(reader())

    def abandon(_: object = None) -> None:
        read_task.cancel()
        for task in list(pending):
            task.cancel()
        while not answers.empty():
            answers.get_nowait()
        give(held[0])
        held[0] = -1
        answers.put_nowait((None, -1))

    watcher = None
    if ended is not None:
        watcher = asyncio.ensure_future(ended.wait())
        watcher.add_done_callback(lambda w: None if w.cancelled() else abandon())
    try:
        while True:
            answer, size = await answers.get()
            if size < 0:
                break
            if answer is not None:
                yield answer  # resumes once the consumer has taken it (written it to the peer)
            give(size)
            slots.release()
        if reader_error and not isinstance(reader_error[0], asyncio.CancelledError):
            raise reader_error[0]
    finally:
        if watcher is not None:
            watcher.cancel()
        if held[0] >= 0:
            abandon()


async def send_all(context: grpc.aio.ServicerContext[Any, Any], answers: AsyncGenerator[Any, None]) -> None:
    """Write every answer to the call; stop quietly when the call has ended (the peer cancelled
    or went away: nobody will read the rest, and that is not an error of this service). A
    handler that yields instead has gRPC log each such write as an ExecuteBatchError. Closing
    ``answers`` (by returning) cancels the work still under way for the call."""
    try:
        async for answer in answers:
            try:
                await context.write(answer)
            except Exception as exc:  # noqa: BLE001 - core refuses writes only to a finished call
                # gRPC core fails the write (ExecuteBatchError) when the peer has cancelled, before
                # the call reports itself done; there is no one left to answer.
                log.debug("call ended before its answer was written: %s", type(exc).__name__)
                return
    finally:
        await answers.aclose()


def freeze_startup_objects() -> None:
    """Move what wiring a service allocated (driver metadata, descriptors, modules) out of the
    garbage collector's reach, so that its collections scan only what serving allocates; any
    garbage of the startup is collected first, not frozen with the rest."""
    gc.collect()
    gc.freeze()


def _service_name() -> str:
    """``ingest`` for ``python -m services.ingest``: the package the running ``__main__`` is in."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    parts = (spec.name if spec is not None else "").split(".")
    return parts[-2] if len(parts) >= 2 else "service"


def run_service(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str | None = None) -> None:
    """Run ``main(stop)`` on uvloop; ``stop`` is set by SIGTERM or SIGINT. Tracing is set up from
    the ``OTEL_*`` variables first (service ``auditmesh-<name>``) and flushed at the end."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    provider = tracing.setup(f"auditmesh-{name or _service_name()}")
    # cassandra-driver logs every server warning of every response ("Batch ... exceeding
    # specified threshold" per batch): once a minute, with a count, is enough.
    logging.getLogger("cassandra.protocol").addFilter(Throttle(60.0))

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(wrapper())
    finally:
        if provider is not None:
            provider.shutdown()
