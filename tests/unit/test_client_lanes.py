"""The SDK batches events of weddings that ingest named as today's (``BatchAck.wedding_day``)
apart from other events, so that their acks never wait for bulk events' writes. Against an
in-process stand-in for ingest on port 0 that names one wedding as today's."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

TODAY = "wed-today"


class CalendarIngest(pb_grpc.IngestServiceServicer):
    """Acks every batch, naming :data:`TODAY` in ``wedding_day`` when the batch holds its events;
    records the weddings of each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def Stream(self, request_iterator: Iterator[pb.EventBatch], context: Any) -> Iterator[pb.BatchAck]:  # noqa: N802
        for batch in request_iterator:
            weddings = [ev.wedding_id for ev in batch.events]
            self.batches.append(weddings)
            ack = pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_OK, accepted=len(batch.events))
            if TODAY in weddings:
                ack.wedding_day.append(TODAY)
            yield ack


@pytest.fixture
def ingest() -> Iterator[tuple[CalendarIngest, str]]:
    servicer = CalendarIngest()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_once_ingest_names_a_wedding_as_today_its_events_travel_in_batches_of_their_own(
    ingest: tuple[CalendarIngest, str],
) -> None:
    """Before ingest has named the wedding, its events share batches with others; after an ack
    named it, every batch holds either only its events or none of them, and nothing is lost."""
    servicer, target = ingest
    client = AuditClient(target, batch_size=500, linger_ms=50)
    try:
        for i in range(40):
            client.log("guestlist.viewed", user_id=f"u{i}", wedding_id=TODAY if i % 2 else "wed-other")
        assert client.flush(timeout=10)
        before = list(servicer.batches)
        assert any(TODAY in b and "wed-other" in b for b in before), before  # learned from this ack
        servicer.batches.clear()
        for i in range(400):
            client.log("guestlist.viewed", user_id=f"u{i}", wedding_id=TODAY if i % 2 else "wed-other")
        assert client.flush(timeout=10)
        after = servicer.batches
        assert sum(len(b) for b in after) == 400
        assert all(set(b) == {TODAY} or TODAY not in b for b in after), after
        assert any(set(b) == {TODAY} for b in after), after
    finally:
        client.close(timeout=1)
