"""The router sends wedding-day requests on links of their own within a budget of its own,
over real ProcessorLinks to an in-process stand-in processor on port 0 that answers each
stream's requests in order and holds normal-lane requests until released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.ingest.forward import Forward
from services.ingest.router import Budget, ProcessorLink, Router


class InOrderProcessor(pb_grpc.ProcessorServiceServicer):
    """Answers a stream's requests one after the other; a normal-lane request only once
    ``release`` is set (a bulk write that takes long)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def Process(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ProcessRequest], context: Any
    ) -> AsyncIterator[pb.ProcessResponse]:
        async for req in request_iterator:
            if req.lane == pb.LANE_NORMAL:
                await self.release.wait()
            yield pb.ProcessResponse(seq=req.seq, ok=True)


def test_a_wedding_day_request_is_not_answered_behind_a_slow_bulk_request() -> None:
    """A wedding-day request sent while a bulk request waits on the same processor is answered
    first, and is charged to the wedding-day budget, not the bulk one."""

    async def go() -> None:
        processor = InOrderProcessor()
        server = grpc.aio.server()
        pb_grpc.add_ProcessorServiceServicer_to_server(processor, server)
        target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()

        def link() -> ProcessorLink:
            return ProcessorLink(target, timeout_s=10, max_message_bytes=1 << 20)

        router = Router(
            [link()],
            Budget(max_events=1_000, max_bytes=1 << 30),
            wedding_day_links=[link()],
            wedding_day_budget=Budget(max_events=1_000, max_bytes=1 << 30),
        )
        router.start()
        try:
            every = router.links + router.wedding_day_links
            await asyncio.wait_for(asyncio.gather(*(ln.connected.wait() for ln in every)), 10)
            assert router.budget_for(pb.LANE_WEDDING_DAY) is router.wedding_day_budget
            assert router.budget_for(pb.LANE_NORMAL) is router.budget
            bulk = asyncio.create_task(router.send(Forward(pb.LANE_NORMAL, [pb.Event()])))
            await asyncio.sleep(0.1)  # the bulk request is on its stream, held by the processor
            answer = await asyncio.wait_for(router.send(Forward(pb.LANE_WEDDING_DAY, [pb.Event()])), 5)
            assert answer.ok and not bulk.done()
            processor.release.set()
            assert (await asyncio.wait_for(bulk, 5)).ok
        finally:
            processor.release.set()
            await router.stop()
            await server.stop(None)

    asyncio.run(go())
