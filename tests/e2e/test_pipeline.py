"""End to end through the real processes: SDK -> ingest -> processors -> Cassandra -> query."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from auditmesh.client import AuditClient
from auditmesh.event_ids import locator_partition
from auditmesh.mesh import MeshLayout
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

DAY_NS = 86_400 * 10**9


@pytest.fixture(scope="module")
def query(mesh: MeshLayout) -> Iterator[pb_grpc.QueryServiceStub]:
    with grpc.insecure_channel(mesh.query_target) as channel:
        yield pb_grpc.QueryServiceStub(channel)


@pytest.fixture(scope="module")
def ingest_channel(mesh: MeshLayout) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    with grpc.insecure_channel(mesh.ingest_target, options=options) as channel:
        yield channel


def search_all(query: pb_grpc.QueryServiceStub, page_size: int = 37, **fields: object) -> list[list[pb.Event]]:
    """Follow page tokens one call at a time; return the pages."""
    pages: list[list[pb.Event]] = []
    token = ""
    while True:
        req = pb.SearchRequest(page_size=page_size, page_token=token, **fields)  # type: ignore[arg-type]
        (page,) = list(query.Search(req, timeout=10))
        pages.append(list(page.events))
        token = page.next_page_token
        if not token:
            return pages


def make_event(event_id: str, wedding: str, **fields: object) -> pb.Event:
    ev = pb.Event(
        event_id=event_id,
        wedding_id=wedding,
        user_id="u-1",
        organization_id="o-1",
        event_type="guestlist.export",
        severity=pb.P1_HIGH,
        outcome=pb.OUTCOME_SUCCESS,
    )
    ev.occurred_at.FromNanoseconds(time.time_ns())
    for name, value in fields.items():
        setattr(ev, name, value)
    return ev


def test_ten_thousand_events_come_back_exactly_once_newest_first(
    mesh: MeshLayout, query: pb_grpc.QueryServiceStub
) -> None:
    run = uuid.uuid4().hex[:8]
    weddings = [f"e2e-{run}-w{i:02d}" for i in range(50)]
    now = time.time_ns()
    sent: dict[str, list[tuple[int, str]]] = {w: [] for w in weddings}
    with AuditClient(mesh.ingest_target, source_service="e2e", batch_size=400) as client:
        for i in range(10_000):
            wedding = weddings[i % 50]
            # Spread over three days (many hour buckets), each event at its own microsecond.
            occurred = now - (i % 3) * DAY_NS - i * 1000
            event_id = client.log(
                "guestlist.viewed",
                user_id=f"u-{run}-{i % 40}",
                organization_id="o-1",
                wedding_id=wedding,
                severity=pb.P3_LOW,
                occurred_at_ns=occurred,
            )
            sent[wedding].append((occurred // 1_000_000, event_id))
        assert client.flush(timeout=120)
        stats = client.stats
    assert stats.acked == 10_000 and stats.rejected == 0 and stats.dropped == 0

    for wedding in weddings:
        pages = search_all(query, wedding_id=wedding)
        got = [ev.event_id for page in pages for ev in page]
        expected = [eid for _, eid in sorted(sent[wedding], reverse=True)]
        assert sorted(got) == sorted(expected), f"{wedding}: missing or extra events"
        assert len(got) == len(set(got)), f"{wedding}: repeated events across pages"
        keys = [(ev.occurred_at.ToMilliseconds(), ev.event_id) for page in pages for ev in page]
        assert keys == sorted(keys, reverse=True), f"{wedding}: not newest first"
        assert all(len(page) == 37 for page in pages[:-1])

    sample = random.Random(1).sample([eid for w in weddings for _, eid in sent[w]], 200)
    # The SDK's ids share locator partitions (auditmesh.event_ids); the fuzz tests look up others.
    assert all(locator_partition(event_id)[1] >= 0 for event_id in sample)
    for event_id in sample:
        found = query.GetEvent(pb.GetEventRequest(event_id=event_id), timeout=5)
        assert found.event_id == event_id and found.wedding_id.startswith(f"e2e-{run}")
        assert found.priority >= 100 and found.received_at_us > 0


HOUR_MS = 3_600_000
SEVERITIES = [pb.P0_CRITICAL, pb.P1_HIGH, pb.P2_MEDIUM, pb.P3_LOW]
OUTCOMES = [pb.OUTCOME_SUCCESS, pb.OUTCOME_FAILURE, pb.OUTCOME_DENIED]


@dataclass(frozen=True)
class Grid:
    """Events of one wedding (and one user) whose type, severity, outcome, organization and
    time vary independently of each other: every combination occurs."""

    wedding: str
    user: str
    now_ms: int
    events: list[pb.Event]

    def select(self, keep: Callable[[pb.Event], bool]) -> set[str]:
        return {ev.event_id for ev in self.events if keep(ev)}


@pytest.fixture(scope="module")
def grid(ingest_channel: grpc.Channel) -> Grid:
    run = uuid.uuid4().hex[:8]
    wedding, user = f"e2e-grid-{run}", f"user-grid-{run}"
    now_ms = time.time_ns() // 1_000_000
    events = []
    combos = itertools.product(
        ["auth.login.failed", "guestlist.export"], SEVERITIES, OUTCOMES, ["org-a", "org-b"], [1, 5, 30]
    )
    for i, (event_type, severity, outcome, org, hours_ago) in enumerate(combos):
        ev = make_event(
            f"{wedding}-{i:03d}",
            wedding,
            user_id=user,
            event_type=event_type,
            severity=severity,
            outcome=outcome,
            organization_id=org,
        )
        ev.occurred_at.FromMilliseconds(now_ms - hours_ago * HOUR_MS - i)
        events.append(ev)
    ack = pb_grpc.IngestServiceStub(ingest_channel).Submit(pb.EventBatch(batch_id=run, events=events), timeout=30)
    assert ack.status == pb.ACK_STATUS_OK and ack.accepted == len(events) == 144, ack
    return Grid(wedding, user, now_ms, events)


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def test_each_filter_selects_exactly_the_matching_events(grid: Grid, query: pb_grpc.QueryServiceStub) -> None:
    """Type, severity, outcome, organization and time range filters (alone and together, by
    wedding and by user) return exactly the events that match, over data where they vary
    independently, so a filter that is ignored or applied as another one is seen."""
    hours_ago = {ev.event_id: (grid.now_ms - ev.occurred_at.ToMilliseconds()) // HOUR_MS for ev in grid.events}
    cases: list[tuple[dict[str, object], Callable[[pb.Event], bool]]] = [
        ({}, lambda ev: True),
        ({"event_types": ["guestlist.export"]}, lambda ev: ev.event_type == "guestlist.export"),
        ({"event_types": ["guestlist.export", "auth.login.failed"]}, lambda ev: True),
        ({"event_types": ["auth.login.succeeded"]}, lambda ev: False),
        *(({"min_severity": sev}, lambda ev, sev=sev: ev.severity <= sev) for sev in SEVERITIES),
        *(({"outcome": out}, lambda ev, out=out: ev.outcome == out) for out in OUTCOMES),
        ({"organization_id": "org-b"}, lambda ev: ev.organization_id == "org-b"),
        ({"organization_id": "org-c"}, lambda ev: False),
        ({"start": timestamp(grid.now_ms - 10 * HOUR_MS)}, lambda ev: hours_ago[ev.event_id] < 10),
        ({"end": timestamp(grid.now_ms - 3 * HOUR_MS)}, lambda ev: hours_ago[ev.event_id] >= 3),
        (
            {"start": timestamp(grid.now_ms - 10 * HOUR_MS), "end": timestamp(grid.now_ms - 3 * HOUR_MS)},
            lambda ev: 3 <= hours_ago[ev.event_id] < 10,
        ),
        (
            {
                "event_types": ["auth.login.failed"],
                "min_severity": pb.P2_MEDIUM,
                "outcome": pb.OUTCOME_DENIED,
                "organization_id": "org-a",
                "start": timestamp(grid.now_ms - 24 * HOUR_MS),
            },
            lambda ev: (
                ev.event_type == "auth.login.failed"
                and ev.severity <= pb.P2_MEDIUM
                and ev.outcome == pb.OUTCOME_DENIED
                and ev.organization_id == "org-a"
                and hours_ago[ev.event_id] < 24
            ),
        ),
    ]
    for fields, keep in cases:
        expected = grid.select(keep)
        for scope in ({"wedding_id": grid.wedding}, {"user_id": grid.user}):
            # One page when only start is given: see the open-end paging test below.
            one_page = "start" in fields and "end" not in fields
            pages = search_all(query, page_size=200 if one_page else 50, **scope, **fields)
            got = [ev.event_id for page in pages for ev in page]
            assert len(got) == len(set(got)) and set(got) == expected, (scope, fields, len(got), len(expected))


def test_a_page_token_only_continues_the_search_it_came_from(grid: Grid, query: pb_grpc.QueryServiceStub) -> None:
    """A real page token is refused (INVALID_ARGUMENT naming page_token) when moved to another
    wedding, another user, other filters or another explicit time range, and continues its own
    search."""
    start, end = timestamp(grid.now_ms - 48 * HOUR_MS), timestamp(grid.now_ms)
    searches: list[dict[str, object]] = [
        {"wedding_id": grid.wedding},
        {"user_id": grid.user},
        {"wedding_id": grid.wedding, "start": start, "end": end},
        {"wedding_id": grid.wedding, "event_types": ["guestlist.export"], "outcome": pb.OUTCOME_FAILURE},
    ]
    for original in searches:
        (first,) = list(query.Search(pb.SearchRequest(page_size=5, **original), timeout=10))  # type: ignore[arg-type]
        token = first.next_page_token
        assert token, original
        (following,) = list(query.Search(pb.SearchRequest(page_size=5, page_token=token, **original), timeout=10))  # type: ignore[arg-type]
        assert following.events and not {e.event_id for e in following.events} & {e.event_id for e in first.events}

        scope = {k: v for k, v in original.items() if k in ("wedding_id", "user_id")}
        moved: list[dict[str, object]] = [
            {**original, **changed}
            for changed in (
                {"event_types": ["auth.login.failed"]},
                {"event_types": ["guestlist.export", "auth.login.failed"]},
                {"min_severity": pb.P1_HIGH},
                {"outcome": pb.OUTCOME_SUCCESS},
                {"organization_id": "org-a"},
                {"start": timestamp(grid.now_ms - 72 * HOUR_MS), "end": end},
                {"start": start, "end": timestamp(grid.now_ms + HOUR_MS)},
            )
        ]
        moved += [
            {**{k: v for k, v in original.items() if k not in scope}, "wedding_id": f"{grid.wedding}-other"},
            {**{k: v for k, v in original.items() if k not in scope}, "user_id": f"{grid.user}-other"},
            {**{k: v for k, v in original.items() if k not in scope}, "user_id": grid.user}
            if "wedding_id" in scope
            else {**{k: v for k, v in original.items() if k not in scope}, "wedding_id": grid.wedding},
        ]
        for fields in moved:
            if fields == original:
                continue
            req = pb.SearchRequest(page_size=5, page_token=token, **fields)  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as info:
                list(query.Search(req, timeout=10))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (original, fields)
            assert (info.value.details() or "").startswith("page_token"), (original, fields, info.value.details())


def test_a_search_with_only_a_start_pages_through(grid: Grid, query: pb_grpc.QueryServiceStub) -> None:
    """A search with an explicit start and the default (open) end can be followed page by page."""
    start = timestamp(grid.now_ms - 10 * HOUR_MS)
    pages = search_all(query, page_size=50, wedding_id=grid.wedding, start=start)
    assert sum(len(page) for page in pages) == 96


def test_resent_batch_creates_no_duplicates(ingest_channel: grpc.Channel, query: pb_grpc.QueryServiceStub) -> None:
    wedding = f"e2e-resend-{uuid.uuid4().hex[:8]}"
    batch = pb.EventBatch(batch_id="b1", events=[make_event(f"{wedding}-{i}", wedding) for i in range(25)])
    submit = pb_grpc.IngestServiceStub(ingest_channel).Submit
    for _ in range(3):
        ack = submit(batch, timeout=10)
        assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 25
    events = [ev for page in search_all(query, wedding_id=wedding) for ev in page]
    assert len(events) == 25


def test_mixed_batch_stores_valid_and_names_each_bad_event(
    ingest_channel: grpc.Channel, query: pb_grpc.QueryServiceStub
) -> None:
    wedding = f"e2e-mixed-{uuid.uuid4().hex[:8]}"
    future = make_event(f"{wedding}-future", wedding)
    future.occurred_at.FromSeconds(int(time.time()) + 3 * 365 * 86400)
    huge_attr = make_event(f"{wedding}-attr", wedding)
    huge_attr.attributes["payload"] = "x" * 1_000_000
    batch = pb.EventBatch(
        batch_id="mixed",
        events=[
            make_event(f"{wedding}-ok-1", wedding),
            make_event("", wedding),
            make_event(f"{wedding}-longwedding", "w" * 10_240),
            future,
            make_event(f"{wedding}-severity", wedding, severity=17),
            huge_attr,
            make_event(f"{wedding}-ok-2", wedding),
        ],
    )
    ack = pb_grpc.IngestServiceStub(ingest_channel).Submit(batch, timeout=10)
    assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 2
    fields = {r.index: r.field for r in ack.rejected}
    assert fields == {1: "event_id", 2: "wedding_id", 3: "occurred_at", 4: "severity", 5: "attributes[payload]"}
    assert all(r.reason for r in ack.rejected)
    stored = {ev.event_id for page in search_all(query, wedding_id=wedding) for ev in page}
    assert stored == {f"{wedding}-ok-1", f"{wedding}-ok-2"}


def test_64mb_message_is_refused_and_ingest_keeps_serving(mesh: MeshLayout, ingest_channel: grpc.Channel) -> None:
    raw = ingest_channel.unary_unary("/auditpb.v1.IngestService/Submit")
    big = pb.EventBatch(batch_id="big", events=[make_event("big", "w", resource_id="x" * (64 * 1024 * 1024))])
    with pytest.raises(grpc.RpcError) as info:
        raw(big.SerializeToString(), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ack = pb_grpc.IngestServiceStub(ingest_channel).Submit(
        pb.EventBatch(batch_id="after", events=[make_event(f"after-{uuid.uuid4().hex}", "w-after")]), timeout=10
    )
    assert ack.accepted == 1


def test_malformed_and_oversized_calls(ingest_channel: grpc.Channel) -> None:
    raw = ingest_channel.unary_unary("/auditpb.v1.IngestService/Submit")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff not a protobuf", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "EventBatch" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        raw(pb.EventBatch(batch_id="empty").SerializeToString(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    many = pb.EventBatch(batch_id="many", events=[make_event(f"m{i}", "w") for i in range(2001)])
    with pytest.raises(grpc.RpcError) as info:
        raw(many.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2001 events" in (info.value.details() or "")


def test_invalid_search_is_invalid_argument(query: pb_grpc.QueryServiceStub) -> None:
    reversed_range = pb.SearchRequest(wedding_id="w")
    reversed_range.start.FromSeconds(2_000_000_000)
    reversed_range.end.FromSeconds(1_900_000_000)
    for req, field in [
        (pb.SearchRequest(), "wedding_id"),
        (reversed_range, "start"),
        (pb.SearchRequest(wedding_id="w", page_token="forged.token"), "page_token"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            list(query.Search(req, timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(field)
    with pytest.raises(grpc.RpcError) as info:
        query.GetEvent(pb.GetEventRequest(event_id="no-such-event"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("which", ["ingest", "processor", "query"])
def test_reflection_lists_services(mesh: MeshLayout, which: str) -> None:
    target = {"ingest": mesh.ingest_target, "query": mesh.query_target, "processor": mesh.processor(0).target}[which]
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (resp,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    expected = {
        "ingest": "auditpb.v1.IngestService",
        "processor": "auditpb.v1.ProcessorService",
        "query": "auditpb.v1.QueryService",
    }[which]
    assert {expected, "grpc.health.v1.Health"} <= names


def test_sdk_from_asyncio_and_threads(mesh: MeshLayout, query: pb_grpc.QueryServiceStub) -> None:
    """log() is safe from many threads and from coroutines; aflush() does not block the loop."""
    import asyncio
    import threading

    wedding = f"async-{uuid.uuid4().hex[:8]}"
    client = AuditClient(mesh.ingest_target)

    def from_thread(n: int) -> None:
        for i in range(250):
            client.log("timeline.updated", user_id=f"t{n}", wedding_id=wedding, resource_id=str(i))

    threads = [threading.Thread(target=from_thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()

    async def from_coroutines() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        for i in range(500):
            client.log("timeline.viewed" if i % 2 else "timeline.updated", user_id="coro", wedding_id=wedding)
        async with asyncio.timeout(60):
            await client.aflush()
        ticking.cancel()
        return ticks

    ticks = asyncio.run(from_coroutines())
    for t in threads:
        t.join()
    assert client.flush(60)
    assert asyncio.run(client.aclose())
    assert ticks > 0, "the caller's event loop was blocked during aflush()"
    stats = client.stats
    assert stats.logged == 1500 and stats.acked == 1500
    events = [ev for page in search_all(query, page_size=500, wedding_id=wedding) for ev in page]
    assert len(events) == 1500 and len({e.event_id for e in events}) == 1500


def test_attributes_are_those_at_log_time(mesh: MeshLayout, query: pb_grpc.QueryServiceStub) -> None:
    """The event stored is the one logged: changing the attributes dict afterwards (callers
    reuse theirs) changes nothing."""
    attributes = {"amount": "120.00", "currency": "EUR"}
    with AuditClient(mesh.ingest_target) as client:
        first = client.log("payment.refund.issued", user_id="u-attr", attributes=attributes)
        attributes["amount"] = "999.99"
        attributes["extra"] = "later"
        second = client.log("payment.refund.issued", user_id="u-attr", attributes=attributes)
        assert client.flush(30)
    stored = {e: dict(query.GetEvent(pb.GetEventRequest(event_id=e), timeout=5).attributes) for e in (first, second)}
    assert stored[first] == {"amount": "120.00", "currency": "EUR"}
    assert stored[second] == {"amount": "999.99", "currency": "EUR", "extra": "later"}
