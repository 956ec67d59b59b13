"""Stand-ins that answer at once, for measuring one hop alone (``bench.cost`` only).

    python -m bench.standin ingest PORT      # IngestService.Stream: every batch acked OK at once
    python -m bench.standin processor PORT   # ProcessorService.Process: every request ok at once

They store nothing: a hop measured against them shows what that hop alone can carry, never
what the mesh delivers.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc


class StandinIngest(pb_grpc.IngestServiceServicer):
    async def Stream(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.EventBatch], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.BatchAck]:
        async for batch in request_iterator:
            yield pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_OK, accepted=len(batch.events))

    async def Submit(  # noqa: N802 - gRPC method name
        self, request: pb.EventBatch, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.BatchAck:
        return pb.BatchAck(batch_id=request.batch_id, status=pb.ACK_STATUS_OK, accepted=len(request.events))


class StandinProcessor(pb_grpc.ProcessorServiceServicer):
    async def Process(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[pb.ProcessRequest], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.ProcessResponse]:
        async for req in request_iterator:
            yield pb.ProcessResponse(seq=req.seq, ok=True)


async def serve(kind: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20)])
    if kind == "ingest":
        pb_grpc.add_IngestServiceServicer_to_server(StandinIngest(), server)
    else:
        pb_grpc.add_ProcessorServiceServicer_to_server(StandinProcessor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"stand-in {kind} on :{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ingest", "processor"):
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], int(argv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
