"""respond_concurrently: a graceful stop ends the stream without leaving a failed read behind."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

from auditmesh.serving import respond_concurrently


async def _stream_that_ends_when_cancelled() -> AsyncIterator[int]:
    # Like a gRPC request stream at shutdown: a read in progress ends the iteration.
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        return
    yield 0


async def _handle(request: int) -> int:
    return request


def test_stopping_while_a_read_waits_leaves_no_unretrieved_task_error() -> None:
    reported: list[dict[str, Any]] = []

    async def main() -> list[int]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        stop = asyncio.Event()
        answers: list[int] = []

        async def consume() -> None:
            async for answer in respond_concurrently(_stream_that_ends_when_cancelled(), _handle, stop=stop):
                answers.append(answer)

        consuming = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(consuming, 5)
        await asyncio.sleep(0.01)
        gc.collect()  # a finished task whose error nobody retrieved reports it when collected
        await asyncio.sleep(0)
        return answers

    assert asyncio.run(main()) == []
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported


def test_cancelling_while_a_read_waits_leaves_no_unretrieved_task_error() -> None:
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        stream_ends = asyncio.Event()

        async def stream() -> AsyncIterator[int]:
            await stream_ends.wait()  # the peer ends the stream after the call was cancelled
            return
            yield 0

        async def consume() -> None:
            async for _ in respond_concurrently(stream(), _handle, stop=asyncio.Event()):
                pass

        consuming = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        stream_ends.set()
        await asyncio.sleep(0.01)

    asyncio.run(main())
    gc.collect()  # a finished task whose error nobody retrieved reports it when collected
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported
