"""The SDK's stream to ingest: grpc.aio, or gRPC's synchronous stack in a forked child."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, NamedTuple

import grpc

from auditpb.v1 import audit_pb2 as pb

__all__ = ["CHANNEL_OPTIONS", "Connection", "ThreadedStream", "channel_options", "open_stream"]

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
]


class Connection(NamedTuple):
    """How the SDK reaches ingest: a bearer token (sent as call metadata) and TLS credentials."""

    token: str | None = None
    credentials: grpc.ChannelCredentials | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None


def channel_options(target: str) -> list[tuple[str, Any]]:
    """The SDK's channel options; a ``dns:`` target (a name that may resolve to several ingest
    addresses) is balanced by gRPC's round_robin policy, which only picks ready addresses, so a
    new stream after a failure goes to an address that is up."""
    if target.startswith("dns:"):
        return [*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")]
    return CHANNEL_OPTIONS


STREAM_METHOD = "/auditpb.v1.IngestService/Stream"


def open_stream(target: str, *, threaded: bool, connection: Connection | None = None) -> tuple[Any, Any]:
    """(channel, call) of a new IngestService.Stream: on grpc.aio, or, ``threaded`` (in a forked
    child), on the synchronous stack. The call takes serialized ``EventBatch`` bytes (the client
    serializes each batch once, for every attempt) and yields ``BatchAck`` messages."""
    connection = connection or Connection()
    if threaded:
        stream = ThreadedStream(target, connection)
        return stream, stream
    options = channel_options(target)
    if connection.credentials is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, connection.credentials, options=options)
    stream = channel.stream_stream(STREAM_METHOD, request_serializer=None, response_deserializer=pb.BatchAck.FromString)
    return channel, stream(metadata=connection.metadata)


class ThreadedStream:
    """One IngestService.Stream over gRPC's synchronous stack, with the parts of grpc.aio's
    channel and call the client uses (write, async iteration, cancel, close).

    A forked child uses it: grpc.aio's process-wide completion-queue poller (a thread) does
    not exist in the child, and a child that uses grpc.aio hangs or crashes, while the
    synchronous stack works there once the parent has no stream open during the fork (which
    ``AuditClient._before_fork`` sees to). Batches go through a queue that gRPC's own thread
    consumes; acks are read by a daemon thread of ours (not an executor's: the interpreter
    joins executor threads at exit before it runs the exit hooks that would end the stream).
    """

    def __init__(self, target: str, connection: Connection | None = None) -> None:
        connection = connection or Connection()
        self._loop = asyncio.get_running_loop()
        options = channel_options(target)
        if connection.credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, connection.credentials, options=options)
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        stream = self._channel.stream_stream(
            STREAM_METHOD, request_serializer=None, response_deserializer=pb.BatchAck.FromString
        )
        self._call = stream(iter(self._requests.get, None), metadata=connection.metadata)
        self._acks: asyncio.Queue[pb.BatchAck | Exception | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="auditmesh-client-acks", daemon=True).start()

    def _read(self) -> None:
        end: Exception | None = None
        try:
            for ack in self._call:
                self._deliver(ack)
        except Exception as exc:  # the stream failed (grpc.RpcError) or was cancelled
            end = exc
        self._deliver(end)

    def _deliver(self, item: pb.BatchAck | Exception | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._acks.put_nowait, item)
        except RuntimeError:
            pass  # the client's loop has ended

    async def write(self, batch: bytes) -> None:
        self._requests.put(batch)

    def __aiter__(self) -> ThreadedStream:
        return self

    async def __anext__(self) -> pb.BatchAck:
        item = await self._acks.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self._requests.put(None)
        self._call.cancel()

    async def close(self) -> None:
        self.cancel()
        self._channel.close()
