"""Random and malformed input to Submit and Stream: every call gets a clear status, valid events
in mixed batches are stored, and no service crashes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import health_of
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def channel(mesh: MeshLayout) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.ingest_target, options=[("grpc.max_send_message_length", 32 << 20)]) as ch:
        yield ch


def submit_raw(channel: grpc.Channel, raw: bytes) -> tuple[grpc.StatusCode, pb.BatchAck | None, str]:
    call = channel.unary_unary("/auditpb.v1.IngestService/Submit", response_deserializer=pb.BatchAck.FromString)
    try:
        return grpc.StatusCode.OK, call(raw, timeout=30), ""
    except grpc.RpcError as exc:
        return exc.code(), None, exc.details() or ""


text = st.text(max_size=40) | st.sampled_from(["", "x" * 300, "w" * 10_000, "\u0000", "é\u2603\U0001f600"])
events = st.builds(
    lambda eid, wedding, user, etype, sev, outcome, skew, attrs: _event(
        eid, wedding, user, etype, sev, outcome, skew, attrs
    ),
    st.one_of(st.just(""), st.uuids().map(str), text),
    text,
    text,
    st.sampled_from(["auth.login.failed", "guestlist.export", "Bad Type", "", "a." * 200]),
    st.integers(min_value=-3, max_value=9),
    st.integers(min_value=-2, max_value=6),
    st.sampled_from([0, 0, 0, -10 * 365 * 86400, 3 * 365 * 86400, -8 * 86400, 200]),
    st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=80),
)


def _event(
    eid: str, wedding: str, user: str, etype: str, sev: int, outcome: int, skew: int, attrs: dict[str, str]
) -> pb.Event:
    ev = pb.Event(
        event_id=eid,
        wedding_id=wedding,
        user_id=user,
        event_type=etype,
        severity=sev,  # type: ignore[arg-type]
        outcome=outcome,
    )  # type: ignore[arg-type]
    ev.occurred_at.FromSeconds(int(time.time()) + skew)
    ev.attributes.update(attrs)
    return ev


@FUZZ
@given(raw=st.binary(max_size=4096))
def test_garbage_bytes_get_a_clear_status(channel: grpc.Channel, raw: bytes) -> None:
    code, ack, details = submit_raw(channel, raw)
    assert code in CLEAR, (code, details)
    if code != grpc.StatusCode.OK:
        assert details, "an error without a reason"
    elif ack is not None:
        batch = pb.EventBatch.FromString(raw)
        assert ack.accepted + len(ack.rejected) == len(batch.events)


@FUZZ
@given(batch=st.lists(events, min_size=1, max_size=30))
def test_random_events_are_each_accounted_for(channel: grpc.Channel, mesh: MeshLayout, batch: list[pb.Event]) -> None:
    run = uuid.uuid4().hex[:8]
    valid_twin = pb.Event(
        event_id=f"fuzz-{run}",
        wedding_id=f"fuzz-{run}",
        user_id="u",
        event_type="auth.login.failed",
        severity=pb.P2_MEDIUM,
        outcome=pb.OUTCOME_FAILURE,
    )
    valid_twin.occurred_at.FromSeconds(int(time.time()))
    message = pb.EventBatch(batch_id=run, events=[*batch, valid_twin])
    code, ack, details = submit_raw(channel, message.SerializeToString())
    assert code in CLEAR, (code, details)
    if ack is None:
        return
    assert ack.status == pb.ACK_STATUS_OK
    assert ack.accepted + len(ack.rejected) == len(message.events)
    assert all(r.field and r.reason for r in ack.rejected)
    assert len(message.events) - 1 not in {r.index for r in ack.rejected}, "the valid neighbour was rejected"
    with grpc.insecure_channel(mesh.query_target) as q:
        assert pb_grpc.QueryServiceStub(q).GetEvent(pb.GetEventRequest(event_id=f"fuzz-{run}"), timeout=10)


def test_wrong_message_types_and_bad_streams(channel: grpc.Channel, mesh: MeshLayout) -> None:
    wrong = pb.SearchRequest(wedding_id="w", user_id="\x01\x02", page_size=5).SerializeToString()
    code, _, details = submit_raw(channel, wrong)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "EventBatch" in details
    stream = channel.stream_stream("/auditpb.v1.IngestService/Stream", response_deserializer=pb.BatchAck.FromString)
    good = pb.EventBatch(batch_id="ok", events=[pb.Event(event_id=f"s-{uuid.uuid4().hex}")])
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([good.SerializeToString(), b"\xff\xfe garbage"]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_same_batch_many_times_at_once(channel: grpc.Channel, mesh: MeshLayout) -> None:
    wedding = f"repeat-{uuid.uuid4().hex[:8]}"
    batch = pb.EventBatch(
        batch_id="r",
        events=[
            _event(f"{wedding}-{i}", wedding, "u", "guestlist.viewed", pb.P3_LOW, pb.OUTCOME_SUCCESS, 0, {})
            for i in range(20)
        ],
    )
    stub = pb_grpc.IngestServiceStub(channel)
    futures = [stub.Submit.future(batch, timeout=60) for _ in range(40)]
    assert all(f.result().accepted == 20 for f in futures)
    with grpc.insecure_channel(mesh.query_target) as q:
        (page,) = list(pb_grpc.QueryServiceStub(q).Search(pb.SearchRequest(wedding_id=wedding, page_size=100)))
    assert sorted(e.event_id for e in page.events) == sorted(e.event_id for e in batch.events)


def test_services_survived_the_fuzzing(mesh: MeshLayout) -> None:
    for proc in mesh.services():
        assert health_of(proc.target) == "SERVING", proc.name
