"""The SDK's batching: full batches go at once; a partial batch waits until its first event
has waited a linger period, so a busy producer sends full batches rather than whatever
accumulated since the last tick; P0 events go at once. Timing tests talk to an in-process
stand-in for ingest on port 0."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually


def _batch_sizes(client: AuditClient) -> list[int]:
    # Nothing listens on port 9, so every batch built stays open (unacknowledged).
    return sorted(batch.count for batch in list(client._open))


def test_a_burst_goes_as_full_batches_and_its_rest_after_the_linger() -> None:
    """A burst leaves as full batches at once, and its remainder only after a linger period."""
    client = AuditClient("127.0.0.1:9", batch_size=500, linger_ms=200)
    try:
        for i in range(1700):  # a few ms, well inside one linger period
            client.log("auth.login.succeeded", user_id=f"u{i}")
        logged = time.monotonic()
        assert_eventually(lambda: sum(_batch_sizes(client)) == 1500, timeout=5, interval=0.01)
        assert _batch_sizes(client) == [500, 500, 500]
        assert_eventually(lambda: sum(_batch_sizes(client)) == 1700, timeout=5, interval=0.01)
        assert time.monotonic() - logged >= 0.19  # the rest waited a linger period for more
        assert _batch_sizes(client) == [200, 500, 500, 500]
    finally:
        client.close(timeout=0.1)


class RecordingIngest(pb_grpc.IngestServiceServicer):
    """An in-process stand-in for ingest: records when each event arrives and acks every batch."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # event type -> time.monotonic() of arrival

    def Stream(self, request_iterator: Iterator[pb.EventBatch], context: Any) -> Iterator[pb.BatchAck]:  # noqa: N802
        for batch in request_iterator:
            now = time.monotonic()
            for ev in batch.events:
                self.arrived.setdefault(ev.event_type, now)
            yield pb.BatchAck(batch_id=batch.batch_id, status=pb.ACK_STATUS_OK, accepted=len(batch.events))


def warm_up(client: AuditClient) -> None:
    """Have one event acknowledged, so the stream is up before anything is timed."""
    client.log("warm.up", user_id="u", severity=pb.P0_CRITICAL)
    assert client.flush(timeout=10)


@pytest.fixture
def ingest() -> Iterator[tuple[RecordingIngest, str]]:
    servicer = RecordingIngest()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_IngestServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_a_p0_event_leaves_at_once_not_at_the_linger_tick(ingest: tuple[RecordingIngest, str]) -> None:
    """With a 2 s linger, a P0 event logged behind a pending normal event reaches ingest well
    before the linger period ends, while the normal event still waits for it."""
    servicer, target = ingest
    client = AuditClient(target, batch_size=500, linger_ms=2000)
    try:
        warm_up(client)
        client.log("auth.login.succeeded", user_id="u")
        logged = time.monotonic()
        client.log("data.export.bulk", user_id="u", severity=pb.P0_CRITICAL)
        assert_eventually(lambda: "data.export.bulk" in servicer.arrived, timeout=10, interval=0.005)
        assert servicer.arrived["data.export.bulk"] - logged < 1.0, "the P0 event waited for the linger tick"
        assert "auth.login.succeeded" not in servicer.arrived, "the normal event did not wait for the linger"
    finally:
        client.close(timeout=5)


def test_a_lone_event_leaves_after_one_to_two_linger_periods(ingest: tuple[RecordingIngest, str]) -> None:
    """A lone normal event waits at least one linger period for company and then leaves: it
    reaches ingest within about two linger periods (generous margin for a loaded machine)."""
    servicer, target = ingest
    client = AuditClient(target, batch_size=500, linger_ms=300)
    try:
        warm_up(client)
        # The warm-up's P0 wake-up restarted the linger timer: log half a period later, so
        # that a batcher sending at the first tick would send after only half a linger.
        time.sleep(0.15)
        logged = time.monotonic()
        client.log("auth.login.succeeded", user_id="u")
        assert_eventually(lambda: "auth.login.succeeded" in servicer.arrived, timeout=10, interval=0.005)
        waited = servicer.arrived["auth.login.succeeded"] - logged
        assert 0.29 <= waited < 2 * 0.3 + 0.5, f"left after {waited:.3f}s with a 0.3 s linger"
    finally:
        client.close(timeout=5)


def test_batches_of_large_events_stay_within_max_batch_bytes() -> None:
    """Events of ~1 KB with a 4 KB max_batch_bytes leave as several batches, none over the
    bound, holding every event once in logged order; an event over the bound on its own is
    refused with its size and the rest still go."""
    rejected: list[pb.Rejection] = []
    client = AuditClient("127.0.0.1:9", max_batch_bytes=4096, linger_ms=10, on_rejected=rejected.append)
    try:
        ids = [client.log("auth.login.succeeded", user_id=f"u{i}", attributes={"blob": "x" * 1000}) for i in range(20)]
        huge = client.log("auth.login.succeeded", user_id="huge", attributes={"blob": "x" * 5000})
        ids.append(client.log("auth.login.succeeded", user_id="after"))
        assert_eventually(lambda: sum(_batch_sizes(client)) == len(ids), timeout=10, interval=0.01)
        batches = sorted(client._open, key=lambda b: int(b.msg.batch_id.rpartition("b")[2]))
        assert len(batches) >= 5
        assert all(b.size == b.msg.ByteSize() <= 4096 for b in batches)
        assert [ev.event_id for b in batches for ev in b.msg.events] == ids
        assert [(r.event_id, r.field) for r in rejected] == [(huge, "event")]
    finally:
        client.close(timeout=0.1)
