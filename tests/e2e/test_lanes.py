"""Ingest's in-flight bounds, through a mesh of this module's own whose bulk lane is tiny:
one processor with one bulk write slot, 2,000 bulk events in flight, half a second of waiting
for room. Past the bound a caller gets RESOURCE_EXHAUSTED with retry info; P0 events and
events of a wedding in today's calendar have budgets and write slots of their own and pass a
saturated bulk lane."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.priority import CalendarEntry
from auditmesh.serving import retry_after_ms
from auditmesh.store import EventStore
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually, own_mesh

BULK_BATCH = 2000
WEDDING_TODAY = f"lanes-today-{uuid.uuid4().hex[:8]}"
"""A wedding of today's calendar, put there before the mesh starts (ingest reads it then)."""


@pytest.fixture(scope="module")
def lanes_mesh(store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLayout]:
    store = EventStore.connect(store_config)
    try:
        today = dt.datetime.now(dt.UTC).date()
        asyncio.run(store.put_calendar([CalendarEntry(WEDDING_TODAY, today, "UTC")]))
    finally:
        store.close()
    env = {
        "AUDITMESH_INGEST_MAX_IN_FLIGHT_EVENTS": str(BULK_BATCH),
        "AUDITMESH_INGEST_ADMIT_WAIT_S": "0.5",
        "AUDITMESH_PROCESSOR_MAX_WRITES": "1",
        "AUDITMESH_PROCESSOR_MAX_GROUP_EVENTS": str(BULK_BATCH),
    }
    # Base 33051, clear of every other test's ports in every slot (23051 of slot 5 was the fault
    # tests' 24051 of slot 0).
    with own_mesh(tmp_path_factory, "lanes", 33051, env=env) as (layout, _):
        yield layout


@pytest.fixture(scope="module")
def submit(lanes_mesh: MeshLayout) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(lanes_mesh.ingest_target, options=options) as channel:
        yield pb_grpc.IngestServiceStub(channel).Submit


def batch(tag: str, count: int, severity: int = pb.P3_LOW, wedding: str = "") -> pb.EventBatch:
    events = []
    for i in range(count):
        ev = pb.Event(
            event_id=f"{tag}-{i}",
            wedding_id=wedding or f"lanes-{tag}",
            user_id="u",
            event_type="guestlist.viewed",
            severity=severity,  # type: ignore[arg-type]
            outcome=pb.OUTCOME_SUCCESS,
            attributes={"pad": "x" * 200},
        )
        ev.occurred_at.FromNanoseconds(time.time_ns())
        events.append(ev)
    return pb.EventBatch(batch_id=tag, events=events)


def flood(submit: grpc.UnaryUnaryMultiCallable, tag: str, stop: threading.Event, acks: list[int]) -> None:
    """Keep one bulk batch coming until ``stop``, counting its acks in ``acks[0]``. The batch is
    built once and resent (idempotent), so that building batches does not compete with the
    measured callers for this process's interpreter."""
    b = batch(tag, BULK_BATCH)
    while not stop.is_set():
        try:
            submit(b, timeout=60)
            acks[0] += 1
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc


def admitted(submit: grpc.UnaryUnaryMultiCallable, b: pb.EventBatch) -> pb.BatchAck:
    """Send ``b``, resending while ingest is at its bound; its ack, every event accepted."""
    while True:
        try:
            ack: pb.BatchAck = submit(b, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            continue
        assert ack.status == pb.ACK_STATUS_OK and ack.accepted == len(b.events), ack
        return ack


def test_past_the_in_flight_bound_callers_get_resource_exhausted_with_retry_info(
    submit: grpc.UnaryUnaryMultiCallable,
) -> None:
    """Sixteen bulk batches at once against room for one: those that cannot get room within
    the admit wait are RESOURCE_EXHAUSTED naming the bound, with a RetryInfo delay; the rest
    are stored."""
    run = uuid.uuid4().hex[:8]
    batches = [batch(f"{run}-{n}", BULK_BATCH) for n in range(16)]

    def send(b: pb.EventBatch) -> tuple[grpc.StatusCode, int, str]:
        try:
            return grpc.StatusCode.OK, submit(b, timeout=60).accepted, ""
        except grpc.RpcError as exc:
            return exc.code(), retry_after_ms(exc), exc.details() or ""

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, batches))
    ok = [r for r in results if r[0] == grpc.StatusCode.OK]
    refused = [r for r in results if r[0] != grpc.StatusCode.OK]
    assert ok and all(accepted == BULK_BATCH for _, accepted, _ in ok), results
    assert refused, "no call was refused at the in-flight bound"
    for code, retry_ms, details in refused:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert retry_ms > 0, f"no RetryInfo with {details!r}"
        assert "in flight" in details, details


def test_a_p0_event_passes_a_saturated_bulk_lane(submit: grpc.UnaryUnaryMultiCallable) -> None:
    """While eight callers keep the bulk lane's in-flight budget full, a P0 event and a bulk
    batch are sent at the same moment, round after round: the P0 event is accepted at once,
    never refused for bulk's lack of room, and acknowledged before the bulk batch is."""
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()
    bulk_acks = [0]

    def bulk_one(tag: str, start: threading.Barrier) -> float:
        """Send a fresh bulk batch until admitted; when it was acked."""
        b = batch(tag, BULK_BATCH)
        start.wait()
        admitted(submit, b)
        return time.monotonic()

    def p0_one(tag: str, start: threading.Barrier) -> float:
        b = batch(tag, 1, severity=pb.P0_CRITICAL)
        start.wait()
        ack = submit(b, timeout=30)  # refused for room, it would raise RESOURCE_EXHAUSTED here
        assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 1, ack
        return time.monotonic()

    rounds = 10
    ahead = 0
    with ThreadPoolExecutor(8) as flooders, ThreadPoolExecutor(2) as pair:
        flooding = [flooders.submit(flood, submit, f"{run}-bulk-{n}", stop, bulk_acks) for n in range(8)]
        try:
            assert_eventually(lambda: bulk_acks[0] >= 2, timeout=60)  # the backlog has formed
            for i in range(rounds):
                start = threading.Barrier(2)
                bulk = pair.submit(bulk_one, f"{run}-measured-{i}", start)
                p0 = pair.submit(p0_one, f"{run}-p0-{i}", start)
                ahead += p0.result() < bulk.result()
        finally:
            stop.set()
        for f in flooding:
            f.result()
    # A P0 event is one row on a write slot of its own; the bulk batch waits for room behind
    # eight callers and for the lane's single write slot. Without the critical lane the P0
    # event would wait (or be refused) with it.
    assert ahead >= rounds - 1, f"the P0 event was acknowledged first in {ahead} of {rounds} rounds"


def test_wedding_day_events_are_acknowledged_ahead_of_bulk_events_logged_with_them(
    submit: grpc.UnaryUnaryMultiCallable,
) -> None:
    """While eight callers keep the bulk lane full, an ordinary batch and a batch of a wedding
    in today's calendar are sent at the same moment, and the wedding's caller goes on sending
    one batch after the other: several of its batches are acknowledged, one after the other,
    before the ordinary batch sent with the first of them is."""
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()
    bulk_acks = [0]

    def store(b: pb.EventBatch) -> float:
        """Send ``b``, resending while ingest is at its bound; the moment of its ack, which
        names the batch's wedding when the calendar says it is today."""
        ack = admitted(submit, b)
        today = b.events[0].wedding_id == WEDDING_TODAY
        assert list(ack.wedding_day) == ([WEDDING_TODAY] if today else []), ack.wedding_day
        return time.monotonic()

    def ordinary(tag: str, start: threading.Barrier) -> float:
        start.wait()
        return store(batch(tag, 50))

    def wedding_day(tag: str, start: threading.Barrier, ordinary_done: threading.Event) -> list[float]:
        start.wait()
        acks: list[float] = []
        while not ordinary_done.is_set() and len(acks) < 20:
            acks.append(store(batch(f"{tag}-{len(acks)}", 50, wedding=WEDDING_TODAY)))
        return acks

    rounds = 8
    ahead: list[int] = []  # per round: wedding-day batches acknowledged before the ordinary one
    with ThreadPoolExecutor(8) as flooders, ThreadPoolExecutor(2) as pair:
        flooding = [flooders.submit(flood, submit, f"{run}-bulk-{n}", stop, bulk_acks) for n in range(8)]
        try:
            assert_eventually(lambda: bulk_acks[0] >= 2, timeout=60)  # the backlog has formed
            for i in range(rounds):
                start, ordinary_done = threading.Barrier(2), threading.Event()
                today = pair.submit(wedding_day, f"{run}-today-{i}", start, ordinary_done)
                other = pair.submit(ordinary, f"{run}-other-{i}", start)
                other_acked = other.result()
                ordinary_done.set()
                ahead.append(sum(acked < other_acked for acked in today.result()))
        finally:
            stop.set()
        for f in flooding:
            f.result()
    # Sharing the bulk lane's budget, links and write slot, the first wedding-day batch is
    # admitted by the same release of room as the ordinary one and written with it, and the
    # next waits for room again: at most one ahead.
    assert statistics.median(ahead) >= 3, ahead
