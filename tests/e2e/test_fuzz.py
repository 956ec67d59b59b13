"""Random and malformed input to Submit and Stream: every call gets a clear status, valid events
in mixed batches are stored, and no service crashes."""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor, health_of
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


def stored_as_sent(found: pb.Event, sent: pb.Event) -> bool:
    return (
        found.event_id,
        found.wedding_id,
        found.user_id,
        found.event_type,
        found.severity,
        found.outcome,
        dict(found.attributes),
    ) == (
        sent.event_id,
        sent.wedding_id,
        sent.user_id,
        sent.event_type,
        sent.severity,
        sent.outcome,
        dict(sent.attributes),
    )


@FUZZ
@given(batch=st.lists(events, min_size=1, max_size=30))
def test_random_events_are_each_accounted_for(channel: grpc.Channel, mesh: MeshLayout, batch: list[pb.Event]) -> None:
    """A batch of random events among valid ones is answered OK with each event either
    accepted or rejected with a field and reason; every accepted event is stored as sent and
    no rejected one is stored. (Non-empty generated ids get a unique prefix, so that examples
    never write over each other's events.)"""
    run = uuid.uuid4().hex[:8]
    for i, ev in enumerate(batch):
        if ev.event_id:
            ev.event_id = f"{run}-{i}-{ev.event_id}"
    # Valid events among the random ones (first, middle, last; normal and critical lanes).
    valid = [
        _event(f"fuzz-{run}-v{n}", f"fuzz-{run}", f"u{n}", "auth.login.failed", severity, pb.OUTCOME_FAILURE, 0, {})
        for n, severity in enumerate([pb.P2_MEDIUM, pb.P0_CRITICAL, pb.P3_LOW, pb.P2_MEDIUM])
    ]
    middle = len(batch) // 2
    message = pb.EventBatch(
        batch_id=run, events=[valid[0], *batch[:middle], valid[1], valid[2], *batch[middle:], valid[3]]
    )
    valid_at = {0, middle + 1, middle + 2, len(message.events) - 1}
    raw = message.SerializeToString()
    assert len(raw) < 8 * 1024 * 1024  # within every limit: nothing but OK is a clear answer
    code, ack, details = submit_raw(channel, raw)
    assert code == grpc.StatusCode.OK and ack is not None, (code, details)
    assert ack.status == pb.ACK_STATUS_OK
    rejected = {r.index for r in ack.rejected}
    assert len(rejected) == len(ack.rejected), "an event rejected twice"
    assert ack.accepted + len(rejected) == len(message.events)
    assert all(r.field and r.reason and r.index < len(message.events) for r in ack.rejected)
    assert all(r.event_id == message.events[r.index].event_id[:128] for r in ack.rejected)  # ids are cut to 128
    assert not valid_at & rejected, "a valid neighbour was rejected"
    with grpc.insecure_channel(mesh.query_target) as q:
        get = pb_grpc.QueryServiceStub(q).GetEvent
        for index, ev in enumerate(message.events):
            if index not in rejected:
                assert stored_as_sent(get(pb.GetEventRequest(event_id=ev.event_id), timeout=10), ev), index
            elif ev.event_id:
                with pytest.raises(grpc.RpcError) as info:
                    get(pb.GetEventRequest(event_id=ev.event_id), timeout=10)
                # Not stored: NOT_FOUND, or INVALID_ARGUMENT for an id no stored event can have.
                not_stored = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
                assert info.value.code() in not_stored, (index, ev.event_id)


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


def test_services_survive_garbage_on_every_service(
    channel: grpc.Channel, mesh: MeshLayout, supervisor: Supervisor
) -> None:
    """Garbage sent to every method of ingest, each processor and query leaves every process
    the same one, SERVING, and still storing and finding a valid event; this test sends its
    own garbage, so it holds whatever ran before it."""
    pids = {proc.name: supervisor.pid(proc.name) for proc in mesh.services()}
    assert all(pids.values()), pids
    rng = random.Random(20)
    garbage = [b"", b"\xff\xfe garbage", *(rng.randbytes(rng.randint(1, 2048)) for _ in range(30))]
    methods = [
        (mesh.ingest_target, "unary_unary", "/auditpb.v1.IngestService/Submit"),
        (mesh.ingest_target, "stream_stream", "/auditpb.v1.IngestService/Stream"),
        (mesh.query_target, "unary_unary", "/auditpb.v1.QueryService/GetEvent"),
        (mesh.query_target, "unary_stream", "/auditpb.v1.QueryService/Search"),
        *(
            (mesh.processor(i).target, "stream_stream", "/auditpb.v1.ProcessorService/Process")
            for i in range(mesh.processors)
        ),
    ]
    for target, kind, method in methods:
        with grpc.insecure_channel(target) as ch:
            call = getattr(ch, kind)(method)
            for raw in garbage:
                with contextlib.suppress(grpc.RpcError):
                    if kind == "unary_unary":
                        call(raw, timeout=10)
                    elif kind == "unary_stream":
                        list(call(raw, timeout=10))
                    else:
                        list(call(iter([raw, raw]), timeout=10))

    assert {proc.name: supervisor.pid(proc.name) for proc in mesh.services()} == pids, "a service died"
    for proc in mesh.services():
        assert health_of(proc.target) == "SERVING", proc.name
    run = uuid.uuid4().hex[:8]
    ev = _event(f"alive-{run}", f"alive-{run}", "u", "auth.login.failed", pb.P2_MEDIUM, pb.OUTCOME_FAILURE, 0, {})
    code, ack, details = submit_raw(channel, pb.EventBatch(batch_id=run, events=[ev]).SerializeToString())
    assert code == grpc.StatusCode.OK and ack is not None and ack.accepted == 1, (code, details)
    with grpc.insecure_channel(mesh.query_target) as q:
        found = pb_grpc.QueryServiceStub(q).GetEvent(pb.GetEventRequest(event_id=ev.event_id), timeout=10)
    assert stored_as_sent(found, ev)
