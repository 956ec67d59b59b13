"""Large and hostile clients against the real services: events and batches at the documented
limits are stored whole, out-of-range and oversized inputs get the right status, pages and
reads stay within their byte bounds."""

from __future__ import annotations

import itertools
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import psutil
import pytest

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout
from auditmesh.serving import retry_after_ms
from auditmesh.supervisor import Supervisor
from auditmesh.validation import Limits
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually, own_mesh

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
    mesh: MeshLayout, supervisor: Supervisor, ingest: pb_grpc.IngestServiceStub, query: pb_grpc.QueryServiceStub
) -> None:
    """600 events at every documented limit in one Submit are all accepted, and each is found
    by wedding search, user search and GetEvent (no batch the store refuses, no half-stored
    event), pages of them stay under gRPC's default 4 MiB receive limit, and no batch was large
    enough for Cassandra to warn about."""
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
    for index in range(mesh.processors):
        log_text = supervisor.log_file(f"processor-{index}").read_text()
        assert "exceeding specified threshold" not in log_text


@pytest.fixture(scope="module")
def refusing_mesh(store_config: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLayout]:
    """A mesh whose processors build batches far past what Cassandra accepts (64 KB attributes,
    no byte bound on a batch), so that the store refuses writes as permanently invalid."""
    env = {"AUDITMESH_MAX_ATTRIBUTE_BYTES": "65536", "AUDITMESH_MAX_BATCH_BYTES": str(256 * 1024 * 1024)}
    with own_mesh(tmp_path_factory, "refusing", 22151, env=env) as (layout, _):
        yield layout


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


@dataclass
class MemoryMesh:
    layout: MeshLayout
    supervisor: Supervisor

    def ingest_rss_mb(self) -> float:
        pid = self.supervisor.pid("ingest")
        assert pid is not None
        return psutil.Process(pid).memory_info().rss / 2**20


@pytest.fixture(scope="module")
def memory_mesh(store_config: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryMesh]:
    """A mesh of its own (one processor) that a test may pause with SIGSTOP."""
    with own_mesh(tmp_path_factory, "memory", 22251, env={"AUDITMESH_PROCESSOR_TIMEOUT_S": "60"}) as mesh:
        layout, supervisor = mesh
        try:
            yield MemoryMesh(layout, supervisor)
        finally:
            supervisor.signal("processor-0", signal.SIGCONT)


def _flood(target: str, batches: Iterator[pb.EventBatch], seconds: float, read_acks: bool) -> None:
    """Stream batches as fast as ingest takes them for ``seconds``; read the acks or not."""
    options = [("grpc.max_send_message_length", _BIG), ("grpc.max_receive_message_length", _BIG)]
    deadline = time.monotonic() + seconds

    def requests() -> Iterator[pb.EventBatch]:
        for batch in batches:
            if time.monotonic() > deadline:
                return
            yield batch

    with grpc.insecure_channel(target, options=options) as channel:
        call = pb_grpc.IngestServiceStub(channel).Stream(requests(), timeout=seconds + 30)
        if read_acks:
            for _ in call:
                pass
        else:
            time.sleep(seconds)
            call.cancel()


def _peak_rss_while(mesh: MemoryMesh, floods: list[threading.Thread]) -> float:
    peak = mesh.ingest_rss_mb()
    for flood in floods:
        flood.start()
    while any(flood.is_alive() for flood in floods):
        peak = max(peak, mesh.ingest_rss_mb())
        time.sleep(0.05)
    return peak


def test_a_stream_of_8_mib_batches_that_never_waits_does_not_grow_ingest(memory_mesh: MemoryMesh) -> None:
    """One stream writing ~7.5 MiB batches of valid events as fast as it can, to a mesh whose
    processor has stopped answering, is held back by flow control: ingest's RSS stays under the
    documented 400 MB (it reached 2 GB while ingest read 128 messages ahead per stream). When
    the caller cancels, ingest drops the call's work at once (nothing of it stays in flight
    waiting for the processor) and gives the memory back."""
    run = uuid.uuid4().hex[:8]
    batch = pb.EventBatch(batch_id=run, events=[max_event(run, i, f"mem-{run}", f"mem-{run}") for i in range(750)])
    assert 7 * 2**20 < batch.ByteSize() < LIMITS.max_message_bytes

    def batches() -> Iterator[pb.EventBatch]:
        for n in itertools.count():
            batch.batch_id = f"{run}-{n}"
            yield batch

    baseline = memory_mesh.ingest_rss_mb()
    memory_mesh.supervisor.signal("processor-0", signal.SIGSTOP)
    try:
        target = memory_mesh.layout.ingest_target
        flood = threading.Thread(target=_flood, args=(target, batches(), 15.0, False))
        peak = _peak_rss_while(memory_mesh, [flood])
        assert peak < 400, f"ingest RSS peaked at {peak:.0f} MB"

        def dropped() -> bool:
            stats = memory_mesh.supervisor.stats("ingest") or {}
            return stats.get("in_flight_events") == 0 and stats.get("read_bytes") == 0

        assert_eventually(dropped, timeout=30)  # the processor's timeout here is 60 s
    finally:
        memory_mesh.supervisor.signal("processor-0", signal.SIGCONT)
    assert_eventually(lambda: memory_mesh.ingest_rss_mb() < baseline + 100, timeout=15)


def test_streams_that_do_not_read_their_acks_do_not_grow_ingest(memory_mesh: MemoryMesh) -> None:
    """Three streams sending batches whose acks carry 2,000 rejections each, never reading the
    acks, are held back once their acks fill the stream's budget: ingest's RSS stays under the
    documented 400 MB (it reached 1.6 GB and kept it after the calls ended); once the calls are
    cancelled ingest gives the memory back and takes new work at once."""
    run = uuid.uuid4().hex[:8]

    def batches(stream: int) -> Iterator[pb.EventBatch]:
        for n in itertools.count():
            events = [pb.Event(event_id=f"{run}-{stream}-{n}-{i}", event_type="Bad Type") for i in range(2000)]
            yield pb.EventBatch(batch_id=f"{run}-{stream}-{n}", events=events)

    baseline = memory_mesh.ingest_rss_mb()
    target = memory_mesh.layout.ingest_target
    floods = [threading.Thread(target=_flood, args=(target, batches(s), 15.0, False)) for s in range(3)]
    peak = _peak_rss_while(memory_mesh, floods)
    assert peak < 400, f"ingest RSS peaked at {peak:.0f} MB"
    with grpc.insecure_channel(target) as channel:
        ack = pb_grpc.IngestServiceStub(channel).Submit(next(batches(9)), timeout=10)
    assert len(ack.rejected) == 2000
    assert_eventually(lambda: memory_mesh.ingest_rss_mb() < baseline + 100, timeout=15)
    # Calls the callers cancelled are not errors of ingest: nothing in its log says otherwise.
    log_text = memory_mesh.supervisor.log_file("ingest").read_text()
    assert "Traceback" not in log_text and " ERROR " not in log_text


def _oversized_batch(run: str, target_bytes: int) -> pb.EventBatch:
    """A batch of valid events just over ``target_bytes`` on the wire."""
    events = []
    batch = pb.EventBatch(batch_id=f"big-{run}")
    i = 0
    while batch.ByteSize() <= target_bytes:
        events = [max_event(run, j, f"big-{run}", f"big-{run}") for j in range(i, i + 50)]
        batch.events.extend(events)
        i += 50
    return batch


def test_a_message_over_the_limit_on_stream_is_refused_and_the_stream_goes_on(
    ingest: pb_grpc.IngestServiceStub, query: pb_grpc.QueryServiceStub
) -> None:
    """A batch over AUDITMESH_MAX_MESSAGE_BYTES (but under twice it) gets a REFUSED ack naming the
    limit, nothing of it is stored, and the next batch on the same stream is stored; on Submit
    the same batch is RESOURCE_EXHAUSTED without retry info (resending cannot help)."""
    run = uuid.uuid4().hex[:8]
    big = _oversized_batch(run, LIMITS.max_message_bytes)
    assert LIMITS.max_message_bytes < big.ByteSize() < 2 * LIMITS.max_message_bytes
    small = pb.EventBatch(batch_id=f"small-{run}", events=[max_event(run, 999_999, f"small-{run}", f"small-{run}")])
    acks = {ack.batch_id: ack for ack in ingest.Stream(iter([big, small]), timeout=60)}
    assert acks[big.batch_id].status == pb.ACK_STATUS_REFUSED
    assert str(LIMITS.max_message_bytes) in acks[big.batch_id].message
    assert (acks[small.batch_id].status, acks[small.batch_id].accepted) == (pb.ACK_STATUS_OK, 1)
    assert search_ids(query, wedding_id=big.events[0].wedding_id) == []
    with pytest.raises(grpc.RpcError) as caught:
        ingest.Submit(big, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after_ms(caught.value) == 0


def test_the_sdk_reports_an_event_too_large_to_send_and_delivers_the_rest(mesh: MeshLayout) -> None:
    """An event larger than the SDK's max_batch_bytes is reported rejected at once (never sent,
    so it cannot block the stream with endless resends), and the events around it are acked."""
    rejected: list[pb.Rejection] = []
    with AuditClient(mesh.ingest_target, source_service="limits", on_rejected=rejected.append) as client:
        first = client.log("auth.login.failed", user_id=f"sdk-{uuid.uuid4().hex[:8]}")
        huge = client.log("auth.login.failed", user_id="sdk-huge", attributes={"blob": "x" * (5 * 2**20)})
        last = client.log("auth.login.failed", user_id="sdk-last")
        client.flush(timeout=30)
        stats = client.stats
    assert [(r.event_id, r.field) for r in rejected] == [(huge, "event")]
    assert (stats.acked, stats.rejected) == (2, 1)
    assert first and last


@pytest.mark.parametrize("method", ["Search", "GetEvent"])
def test_a_malformed_query_request_is_invalid_argument(mesh: MeshLayout, method: str) -> None:
    """Bytes that are not the request message are INVALID_ARGUMENT naming the message type."""
    with grpc.insecure_channel(mesh.query_target) as channel:
        call = (channel.unary_stream if method == "Search" else channel.unary_unary)(
            f"/auditpb.v1.QueryService/{method}"
        )
        with pytest.raises(grpc.RpcError) as caught:
            result = call(b"\xff\xff\xff", timeout=10)
            if method == "Search":
                list(result)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed message" in (caught.value.details() or "")
