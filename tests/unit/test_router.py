"""The router sends each request to the connected processor link with the fewest events in
flight, over real ProcessorLinks to in-process stand-in processors on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.ingest.forward import Forward
from services.ingest.router import Budget, ProcessorLink, Router


class StandInProcessor(pb_grpc.ProcessorServiceServicer):
    """Answers each request of a stream in turn, ``delay_s`` after reading it, and counts them."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.requests = 0

    async def Process(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ProcessRequest], context: Any
    ) -> AsyncIterator[pb.ProcessResponse]:
        async for req in request_iterator:
            self.requests += 1
            await asyncio.sleep(self.delay_s)
            yield pb.ProcessResponse(seq=req.seq, ok=True)


async def serve(processor: StandInProcessor) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_ProcessorServiceServicer_to_server(processor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_a_slow_processor_gets_fewer_requests() -> None:
    """With eight senders at once, a processor ten times slower than its peer gets under a third
    of the requests: the router picks the link with the fewest events in flight, whatever the
    order of the links (the slow one is listed first)."""

    async def go() -> tuple[int, int]:
        slow, fast = StandInProcessor(0.05), StandInProcessor(0.005)
        servers = [await serve(slow), await serve(fast)]
        links = [ProcessorLink(target, timeout_s=10, max_message_bytes=1 << 20) for _, target in servers]
        router = Router(links, Budget(max_events=100_000, max_bytes=1 << 30))
        router.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(link.connected.wait() for link in links)), 10)

            async def sender(n: int) -> None:
                for i in range(20):
                    events = [pb.Event(event_id=f"s{n}-{i}-{k}") for k in range(10)]
                    answer = await router.send(Forward(pb.LANE_NORMAL, events))
                    assert answer.ok

            await asyncio.gather(*(sender(n) for n in range(8)))
            return slow.requests, fast.requests
        finally:
            await router.stop()
            for server, _ in servers:
                await server.stop(None)

    slow_requests, fast_requests = asyncio.run(go())
    assert slow_requests + fast_requests == 160
    # An even split (a pick blind to load) gives 1:1; all to the first link gives 160:0.
    assert slow_requests < 0.5 * fast_requests, (slow_requests, fast_requests)


def test_processors_that_answer_at_once_share_the_requests() -> None:
    """One sender at a time, processors that answer before the next request: every link has
    nothing in flight at each pick, so the tie is taken in turn. Taken by list order, the first
    processor got every request, and processors the scaler added stood idle."""

    async def go() -> list[int]:
        processors = [StandInProcessor(0.0) for _ in range(3)]
        servers = [await serve(p) for p in processors]
        links = [ProcessorLink(target, timeout_s=10, max_message_bytes=1 << 20) for _, target in servers]
        router = Router(links, Budget(max_events=100_000, max_bytes=1 << 30))
        router.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(link.connected.wait() for link in links)), 10)
            for i in range(30):
                answer = await router.send(Forward(pb.LANE_NORMAL, [pb.Event(event_id=f"one-{i}")]))
                assert answer.ok
            return [p.requests for p in processors]
        finally:
            await router.stop()
            for server, _ in servers:
                await server.stop(None)

    assert asyncio.run(go()) == [10, 10, 10]
