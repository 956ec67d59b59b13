"""Large and hostile clients against the real services: events and batches at the documented
limits are stored whole, out-of-range and oversized inputs get the right status, pages and
reads stay within their byte bounds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from auditmesh.mesh import MeshLayout
from auditmesh.serving import retry_after_ms
from auditmesh.supervisor import Supervisor
from auditmesh.validation import Limits
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import TEST_KEYSPACE, slot_port, slot_redis_url

LIMITS = Limits()
_BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def query(mesh: MeshLayout) -> Iterator[pb_grpc.QueryServiceStub]:
    # gRPC's default receive limit (4 MiB), as most clients have it.
    with grpc.insecure_channel(mesh.query_target, options=[("grpc.max_send_message_length", _BIG)]) as channel:
        yield pb_grpc.QueryServiceStub(channel)


@pytest.fixture(scope="module")
def ingest(mesh: MeshLayout) -> Iterator[pb_grpc.IngestServiceStub]:
    options = [("grpc.max_send_message_length", _BIG), ("grpc.max_receive_message_length", _BIG)]
    with grpc.insecure_channel(mesh.ingest_target, options=options) as channel:
        yield pb_grpc.IngestServiceStub(channel)


def max_event(run: str, i: int, wedding: str, user: str) -> pb.Event:
    """An event with every field at its documented limit (~9.9 KB)."""
    text = LIMITS.max_text_len
    ev = pb.Event(
        event_id=f"{run}-{i:06d}".ljust(LIMITS.max_id_len, "x"),
        wedding_id=wedding.ljust(LIMITS.max_id_len, "w"),
        user_id=user.ljust(LIMITS.max_id_len, "u"),
        organization_id="org".ljust(LIMITS.max_id_len, "o"),
        event_type="guestlist.export." + "a" * (text - 17),
        severity=pb.P2_MEDIUM,
        outcome=pb.OUTCOME_SUCCESS,
        source_service="s" * text,
        source_ip="1" * text,
        resource_type="r" * text,
        resource_id="i" * text,
    )
    # Keys and values of all attributes together just under max_attribute_bytes.
    per_key = LIMITS.max_attribute_bytes // 4
    for k in range(4):
        key = f"k{k}"
        ev.attributes[key] = "v" * (per_key - len(key) - 1)
    ev.occurred_at.FromNanoseconds(time.time_ns() - i * 1000)
    return ev


def search_ids(query: pb_grpc.QueryServiceStub, **fields: object) -> list[str]:
    """Every event id a search returns, following page tokens."""
    ids: list[str] = []
    token = ""
    while True:
        req = pb.SearchRequest(page_size=1000, page_token=token, **fields)  # type: ignore[arg-type]
        for page in query.Search(req, timeout=30):
            ids.extend(ev.event_id for ev in page.events)
            token = page.next_page_token
        if not token:
            return ids


def test_max_size_events_in_max_size_batches_are_stored_whole(
    ingest: pb_grpc.IngestServiceStub, query: pb_grpc.QueryServiceStub
) -> None:
    """600 events at every documented limit in one Submit are all accepted, and each is found
    by wedding search, user search and GetEvent (no batch the store refuses, no half-stored
    event), and pages of them stay under gRPC's default 4 MiB receive limit."""
    run = uuid.uuid4().hex[:8]
    wedding, user = f"lim-{run}-w", f"lim-{run}-u"
    events = [max_event(run, i, wedding, user) for i in range(600)]
    batch = pb.EventBatch(batch_id=f"lim-{run}", events=events)
    assert batch.ByteSize() < LIMITS.max_message_bytes
    ack = ingest.Submit(batch, timeout=120)
    assert list(ack.rejected) == []
    assert (ack.status, ack.accepted) == (pb.ACK_STATUS_OK, 600)
    sent = sorted(ev.event_id for ev in events)
    assert sorted(search_ids(query, wedding_id=events[0].wedding_id)) == sent
    assert sorted(search_ids(query, user_id=events[0].user_id)) == sent
    for ev in events[::7]:
        got = query.GetEvent(pb.GetEventRequest(event_id=ev.event_id), timeout=10)
        assert (got.event_id, got.wedding_id, dict(got.attributes)) == (ev.event_id, ev.wedding_id, dict(ev.attributes))


@pytest.fixture(scope="module")
def refusing_mesh(store_config: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLayout]:
    """A mesh whose processors build batches far past what Cassandra accepts (64 KB attributes,
    no byte bound on a batch), so that the store refuses writes as permanently invalid."""
    layout = MeshLayout(
        ingest_port=slot_port(22151),
        processor_base_port=slot_port(22161),
        processors=1,
        query_port=slot_port(22171),
        keyspace=TEST_KEYSPACE,
        extra_env={
            "AUDITMESH_REDIS_URL": slot_redis_url(15),
            "AUDITMESH_MAX_ATTRIBUTE_BYTES": "65536",
            "AUDITMESH_MAX_BATCH_BYTES": str(256 * 1024 * 1024),
        },
    )
    supervisor = Supervisor(tmp_path_factory.mktemp("refusing"))
    try:
        layout.start(supervisor)
        yield layout
    finally:
        layout.stop(supervisor)


def test_a_write_the_store_refuses_is_retried_never_reported_rejected(refusing_mesh: MeshLayout) -> None:
    """When Cassandra refuses a write of valid events ("Batch too large"), ingest answers so that
    the caller resends (UNAVAILABLE with RetryInfo on Submit, RETRY on Stream), never OK with the
    events listed as rejected: part of them may be stored, and only a resend completes them."""
    run = uuid.uuid4().hex[:8]
    # Many partitions per statement: Cassandra checks the size of multi-partition batches only.
    events = [max_event(run, i, f"ref-{run}-{i}", f"ref-{run}-{i}") for i in range(100)]
    for ev in events:
        ev.attributes["k0"] = "v" * 56_000
    batch = pb.EventBatch(batch_id=f"ref-{run}", events=events)
    options = [("grpc.max_send_message_length", _BIG), ("grpc.max_receive_message_length", _BIG)]
    with grpc.insecure_channel(refusing_mesh.ingest_target, options=options) as channel:
        stub = pb_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Submit(batch, timeout=60)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Batch too large" in (caught.value.details() or "")
        assert retry_after_ms(caught.value) > 0
        (ack,) = list(stub.Stream(iter([batch]), timeout=60))
    assert (ack.status, ack.accepted, list(ack.rejected)) == (pb.ACK_STATUS_RETRY, 0, [])
    assert ack.retry_after_ms > 0


@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [("start", 10**12, 0), ("start", -(10**12), 0), ("end", 1_700_000_000, -1), ("end", 1_700_000_000, 2 * 10**9)],
)
def test_search_with_a_timestamp_outside_protobufs_range_is_invalid_argument(
    query: pb_grpc.QueryServiceStub, field: str, seconds: int, nanos: int
) -> None:
    """start/end outside the Timestamp range are INVALID_ARGUMENT naming the field, not UNKNOWN."""
    req = pb.SearchRequest(wedding_id="w-1")
    getattr(req, field).seconds = seconds
    getattr(req, field).nanos = nanos
    with pytest.raises(grpc.RpcError) as caught:
        list(query.Search(req, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}: ")


@pytest.mark.parametrize(("seconds", "nanos"), [(10**12, 0), (-(10**12), 0), (0, -1), (0, 2 * 10**9)])
def test_an_event_with_an_invalid_occurred_at_is_rejected_and_its_neighbours_stored(
    ingest: pb_grpc.IngestServiceStub, seconds: int, nanos: int
) -> None:
    """An occurred_at outside the Timestamp range is a per-event rejection naming the field."""
    run = uuid.uuid4().hex[:8]
    good = max_event(run, 0, f"ts-{run}", f"ts-{run}")
    bad = max_event(run, 1, f"ts-{run}", f"ts-{run}")
    bad.occurred_at.seconds = seconds or good.occurred_at.seconds
    bad.occurred_at.nanos = nanos
    ack = ingest.Submit(pb.EventBatch(batch_id=run, events=[good, bad]), timeout=30)
    assert ack.accepted == 1
    assert [(r.index, r.field) for r in ack.rejected] == [(1, "occurred_at")]


@pytest.mark.parametrize("event_id", ["x" * 10_000, "婚" * 10_000, "y" * 70_000, "z" * 1_000_000, "a b", "é"])
def test_get_event_with_an_impossible_id_is_invalid_argument_without_echoing_it(
    query: pb_grpc.QueryServiceStub, event_id: str
) -> None:
    """Ids no stored event can have (too long, not printable ASCII) are INVALID_ARGUMENT, every
    time, and the message does not repeat the id."""
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as caught:
            query.GetEvent(pb.GetEventRequest(event_id=event_id), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = caught.value.details() or ""
        assert details.startswith("event_id: ") and len(details) < 200


def test_get_event_of_an_unknown_id_is_not_found(query: pb_grpc.QueryServiceStub) -> None:
    """A valid id that is not stored is NOT_FOUND."""
    with pytest.raises(grpc.RpcError) as caught:
        query.GetEvent(pb.GetEventRequest(event_id="x" * LIMITS.max_id_len), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "fields",
    [
        {"wedding_id": "w" * 100_000},
        {"user_id": "u" * 129},
        {"wedding_id": "w-1", "organization_id": "o" * 70_000},
        {"wedding_id": "w-1", "event_types": ["a.b"] * 65},
        {"wedding_id": "w-1", "event_types": ["a." + "b" * 300]},
        {"wedding_id": "w-1", "page_token": "t" * 5000},
    ],
)
def test_search_with_oversized_fields_is_invalid_argument(
    query: pb_grpc.QueryServiceStub, fields: dict[str, object]
) -> None:
    """Oversized search fields are INVALID_ARGUMENT naming the field, not a driver error."""
    with pytest.raises(grpc.RpcError) as caught:
        list(query.Search(pb.SearchRequest(**fields), timeout=10))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    name = next(iter(k for k in fields if k != "wedding_id"), "wedding_id")
    assert (caught.value.details() or "").startswith(f"{name}: ")


def test_a_search_whose_filter_matches_little_is_bounded_per_call(
    ingest: pb_grpc.IngestServiceStub, query: pb_grpc.QueryServiceStub
) -> None:
    """A filter that matches only the oldest 3 of 12,000 events does not scan the wedding in one
    call: the first page comes back empty with a token, and following the tokens finds exactly
    the 3 matching events."""
    run = uuid.uuid4().hex[:8]
    wedding = f"scan-{run}"
    now = time.time_ns()
    for start in range(0, 12_000, 2000):
        events = []
        for i in range(start, start + 2000):
            ev = pb.Event(
                event_id=f"scan-{run}-{i:05d}",
                wedding_id=wedding,
                user_id=f"u-{run}",
                event_type="auth.login.failed" if i >= 11_997 else "guestlist.viewed",
                severity=pb.P3_LOW,
                outcome=pb.OUTCOME_SUCCESS,
            )
            ev.occurred_at.FromNanoseconds(now - i * 1_000_000)
            events.append(ev)
        ack = ingest.Submit(pb.EventBatch(batch_id=f"{run}-{start}", events=events), timeout=60)
        assert ack.accepted == 2000
    req = pb.SearchRequest(wedding_id=wedding, event_types=["auth.login.failed"], page_size=10)
    (first,) = list(query.Search(req, timeout=10))
    assert list(first.events) == [] and first.next_page_token
    found = []
    calls = 1
    token = first.next_page_token
    while token:
        req.page_token = token
        (page,) = list(query.Search(req, timeout=10))
        found.extend(ev.event_id for ev in page.events)
        token = page.next_page_token
        calls += 1
    assert found == [f"scan-{run}-{i:05d}" for i in (11_997, 11_998, 11_999)]
    assert calls >= 3
