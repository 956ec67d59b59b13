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
