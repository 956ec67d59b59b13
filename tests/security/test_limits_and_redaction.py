"""Rate limits per caller and redaction at ingest, against the real services of a secure mesh."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_status import rpc_status

from auditmesh.security.redaction import MASK, REDACTED_ATTRIBUTE
from auditmesh.serving import retry_after_ms
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.security.conftest import RATE_CALLS_BURST, RATE_EVENTS_BURST, SecureMesh, bearer, make_event, submit


@pytest.fixture(scope="module")
def ingest(secure_mesh: SecureMesh) -> Iterator[grpc.Channel]:
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        yield channel


def test_a_caller_over_its_rate_is_limited_others_and_p0_are_not(secure_mesh: SecureMesh, ingest: grpc.Channel) -> None:
    """A subject past its burst gets RESOURCE_EXHAUSTED with RetryInfo; another subject's batch
    passes at the same moment, and so do the limited subject's P0 events (their own allowance)."""
    run = uuid.uuid4().hex[:8]
    noisy = secure_mesh.token(f"noisy-{run}", "ingest:write")
    quiet = secure_mesh.token(f"quiet-{run}", "ingest:write")
    wedding = f"rate-{run}"
    ack = submit(ingest, noisy, *(make_event(wedding) for _ in range(RATE_EVENTS_BURST)))
    assert ack.accepted == RATE_EVENTS_BURST
    with pytest.raises(grpc.RpcError) as caught:
        submit(ingest, noisy, *(make_event(wedding) for _ in range(10)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(caught.value) is not None  # type: ignore[arg-type]
    assert retry_after_ms(caught.value) > 0
    assert submit(ingest, quiet, *(make_event(wedding) for _ in range(10))).accepted == 10
    critical = [make_event(wedding, severity=pb.P0_CRITICAL) for _ in range(5)]
    assert submit(ingest, noisy, *critical).accepted == 5


def test_a_query_caller_over_its_call_rate_is_limited_others_are_not(secure_mesh: SecureMesh) -> None:
    """Query calls past a subject's burst get RESOURCE_EXHAUSTED with RetryInfo while another
    subject's call goes through."""
    run = uuid.uuid4().hex[:8]
    busy = bearer(secure_mesh.token(f"busy-{run}", "query:read"))
    calm = bearer(secure_mesh.token(f"calm-{run}", "query:read"))
    request = pb.GetEventRequest(event_id=f"none-{run}")
    with secure_mesh.channel(secure_mesh.layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        codes = []
        for _ in range(RATE_CALLS_BURST + 50):
            try:
                stub.GetEvent(request, timeout=10, metadata=busy)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert retry_after_ms(exc) > 0
                    break
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes[-3:]
        assert set(codes[:-1]) == {grpc.StatusCode.NOT_FOUND}
        with pytest.raises(grpc.RpcError) as other:
            stub.GetEvent(request, timeout=10, metadata=calm)
        assert other.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_batches_over_the_rate_get_a_retry_ack(secure_mesh: SecureMesh, ingest: grpc.Channel) -> None:
    """On a stream, a batch over the caller's rate is answered RETRY with a delay, not dropped."""
    token = secure_mesh.token(f"streamer-{uuid.uuid4().hex[:8]}", "ingest:write")
    wedding = f"rate-stream-{uuid.uuid4().hex[:8]}"
    batches = [
        pb.EventBatch(batch_id="b1", events=[make_event(wedding) for _ in range(RATE_EVENTS_BURST)]),
        pb.EventBatch(batch_id="b2", events=[make_event(wedding) for _ in range(10)]),
    ]
    acks = list(pb_grpc.IngestServiceStub(ingest).Stream(iter(batches), timeout=15, metadata=bearer(token)))
    by_id = {ack.batch_id: ack for ack in acks}
    assert by_id["b1"].status == pb.ACK_STATUS_OK and by_id["b1"].accepted == RATE_EVENTS_BURST
    assert by_id["b2"].status == pb.ACK_STATUS_RETRY and by_id["b2"].retry_after_ms > 0


def test_secrets_are_masked_before_they_are_stored(secure_mesh: SecureMesh, ingest: grpc.Channel) -> None:
    """A password attribute, a card number and a bearer token inside other values are stored
    masked, the event says which keys were masked, and harmless values are untouched."""
    wedding = f"redact-{uuid.uuid4().hex[:8]}"
    ev = make_event(wedding)
    ev.attributes.update(
        {
            "Password": "hunter2",
            "note": "paid with 4111 1111 1111 1111 today",
            "header": "Bearer abc.def-123",
            "amount": "120.00",
            "order": "1733150000000",  # 13 digits that fail the Luhn check: not a card
        }
    )
    writer = secure_mesh.token(f"redact-{wedding}", "ingest:write")
    assert submit(ingest, writer, ev).accepted == 1
    admin = secure_mesh.token("admin", "admin")
    with secure_mesh.channel(secure_mesh.layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)

        # The ack means the event is stored: it can be read at once.
        stored = stub.GetEvent(pb.GetEventRequest(event_id=ev.event_id), timeout=10, metadata=bearer(admin))
        attributes = dict(stored.attributes)
    assert attributes == {
        "Password": MASK,
        "note": f"paid with {MASK} today",
        "header": MASK,
        "amount": "120.00",
        "order": "1733150000000",
        REDACTED_ATTRIBUTE: "Password,header,note",
    }
