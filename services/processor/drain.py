"""Draining a processor that is registered in membership: deregister, wait for ingest to stop
sending and close its streams, then finish what is under way and exit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from auditpb.v1 import audit_pb2 as pb
from services.processor.servicer import ProcessorServicer

__all__ = ["CountedProcessorServicer", "wait_streams_closed"]


class CountedProcessorServicer(ProcessorServicer):
    """The servicer, counting the Process streams open on it."""

    open_streams = 0

    async def Process(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.ProcessRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.open_streams += 1
        try:
            await super().Process(request_iterator, context)
        finally:
            self.open_streams -= 1


async def wait_streams_closed(servicer: CountedProcessorServicer, timeout_s: float) -> bool:
    """Wait until no stream is open (ingest retired its links to this processor after the
    deregistration, each once its requests were answered); False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while servicer.open_streams > 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
