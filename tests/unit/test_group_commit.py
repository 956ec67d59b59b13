"""Group commit writes waiting requests together, highest lane first, and answers each one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from auditmesh.errors import PermanentError, StoreUnavailable
from auditmesh.metrics import Reservoir
from auditmesh.store import WriteStats
from auditpb.v1 import audit_pb2 as pb
from services.processor.group_commit import GroupCommitter, Outcome


def request(lane: int, *ids: str) -> pb.ProcessRequest:
    return pb.ProcessRequest(lane=lane, events=[pb.Event(event_id=i) for i in ids])  # type: ignore[arg-type]


class Store:
    """Records each write; a write containing ``fail_on`` raises ``error``."""

    def __init__(self, fail_on: str = "", error: Exception | None = None) -> None:
        self.writes: list[list[str]] = []
        self.bumps = 0
        self.release = asyncio.Event()
        self.gates: list[asyncio.Event] = []  # write n also waits for gates[n] when there is one
        self.bump_gate = asyncio.Event()
        self.bump_gate.set()
        self.fail_on = fail_on
        self.error = error

    async def write(self, events: Iterable[pb.Event]) -> WriteStats:
        ids = [ev.event_id for ev in events]
        self.writes.append(ids)
        if len(self.writes) <= len(self.gates):
            await self.gates[len(self.writes) - 1].wait()
        await self.release.wait()
        if self.fail_on in ids and self.error is not None:
            raise self.error
        return WriteStats(partitions=[("w", i, 0) for i in ids])

    async def bump(self, partitions: Iterable[tuple[str, str, int]]) -> None:
        self.bumps += 1
        await self.bump_gate.wait()


async def ticks(n: int = 10) -> None:
    """Let every ready task run a few steps (a submit starts its writer task one step later)."""
    for _ in range(n):
        await asyncio.sleep(0)


def committer(store: Store, slots: int = 1, max_events: int = 100) -> GroupCommitter:
    return GroupCommitter(store.write, store.bump, slots=slots, max_events=max_events, write_us=Reservoir())


async def behind_a_slow_write(
    store: Store, commit: GroupCommitter, requests: list[pb.ProcessRequest]
) -> tuple[Outcome, list[Outcome]]:
    """Submit a first request whose write holds the only slot until ``store.release`` is set,
    queue ``requests`` behind it, then release the store; the outcomes of the first and the rest."""
    assert not store.release.is_set()
    first = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "slow")))
    await ticks()
    assert store.writes == [["slow"]]  # the slow write holds the slot
    rest = []
    for req in requests:
        rest.append(asyncio.create_task(commit.submit(req)))
        await ticks()  # each request is queued, waiting for the slot, before the next
    assert store.writes == [["slow"]], "nothing else may be written while the slot is held"
    store.release.set()
    return await first, list(await asyncio.gather(*rest))


def test_waiting_requests_are_written_together_highest_lane_first() -> None:
    """Requests that queue while the only slot is busy are written as one group, critical lane
    first, then wedding-day, then normal, each lane in arrival order, with one bump per group."""

    async def go() -> None:
        store = Store()
        commit = committer(store)
        first, rest = await behind_a_slow_write(
            store,
            commit,
            [
                request(pb.LANE_NORMAL, "b", "c"),
                request(pb.LANE_WEDDING_DAY, "d"),
                request(pb.LANE_CRITICAL, "p0"),
                request(pb.LANE_NORMAL, "e"),
                request(pb.LANE_WEDDING_DAY, "f"),
            ],
        )
        assert store.writes == [["slow"], ["p0", "d", "f", "b", "c", "e"]]
        assert first.grouped_with == 1 and [o.grouped_with for o in rest] == [5] * 5
        assert all(o.error is None and o.stats is not None for o in [first, *rest])
        assert store.bumps == 2  # once per group, not per request

    asyncio.run(go())


def test_groups_stop_at_max_events_and_the_highest_lane_goes_first() -> None:
    """A group holds at most ``max_events`` events (a single larger request goes alone), and
    when not everything fits, the higher lanes are written in the earlier group."""

    async def go() -> None:
        store = Store()
        commit = committer(store, max_events=5)
        _, rest = await behind_a_slow_write(
            store,
            commit,
            [
                request(pb.LANE_NORMAL, "n1a", "n1b"),
                request(pb.LANE_NORMAL, "n2a", "n2b"),
                request(pb.LANE_WEDDING_DAY, "w1a", "w1b"),
                request(pb.LANE_CRITICAL, "c1a", "c1b"),
                request(pb.LANE_NORMAL, "big1", "big2", "big3", "big4", "big5", "big6", "big7"),
                request(pb.LANE_NORMAL, "n3"),
            ],
        )
        assert store.writes == [
            ["slow"],
            ["c1a", "c1b", "w1a", "w1b"],  # the next normal request (2 events) would make 6
            ["n1a", "n1b", "n2a", "n2b"],
            ["big1", "big2", "big3", "big4", "big5", "big6", "big7"],  # over the limit: alone
            ["n3"],
        ]
        assert [o.grouped_with for o in rest] == [2, 2, 2, 2, 1, 1]
        assert all(o.error is None for o in rest)

    asyncio.run(go())


def test_a_permanent_failure_of_a_group_is_retried_request_by_request() -> None:
    """When a group's write fails permanently, each of its requests is written again on its own,
    so only the bad request fails and its neighbours are stored."""

    async def go() -> None:
        store = Store(fail_on="bad", error=PermanentError("cassandra: InvalidRequest"))
        commit = committer(store)
        _, (good, bad, other) = await behind_a_slow_write(
            store,
            commit,
            [request(pb.LANE_NORMAL, "ok1", "ok2"), request(pb.LANE_NORMAL, "bad"), request(pb.LANE_NORMAL, "ok3")],
        )
        assert store.writes == [["slow"], ["ok1", "ok2", "bad", "ok3"], ["ok1", "ok2"], ["bad"], ["ok3"]]
        assert good.error is None and other.error is None
        assert good.stats is not None and [p[1] for p in good.stats.partitions] == ["ok1", "ok2"]
        assert isinstance(bad.error, PermanentError)
        assert store.bumps == 3  # the slow write and the two good requests

    asyncio.run(go())


def test_an_unavailable_store_fails_the_whole_group_as_retryable() -> None:
    """A retryable failure of a group's write answers every request in the group with it (the
    caller resends), without retrying the requests one by one against a store that is down."""

    async def go() -> None:
        store = Store(fail_on="a", error=StoreUnavailable("cassandra: NoHostAvailable"))
        commit = committer(store)
        _, outcomes = await behind_a_slow_write(store, commit, [request(pb.LANE_NORMAL, i) for i in "abc"])
        assert store.writes == [["slow"], ["a", "b", "c"]]
        assert all(isinstance(o.error, StoreUnavailable) and o.grouped_with == 3 for o in outcomes)
        assert store.bumps == 1  # only the slow write's

    asyncio.run(go())


def test_a_cancelled_caller_does_not_interrupt_the_write_of_its_group() -> None:
    """The caller whose task writes a group is cancelled (its stream ended) mid-write: the write
    goes on, once, and the other request of the group is answered with its success."""

    async def go() -> None:
        store = Store()
        store.release.set()
        store.gates = [asyncio.Event(), asyncio.Event()]
        commit = committer(store)
        blocker = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "x")))
        await ticks()
        leader = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "a")))
        follower = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "b")))
        await ticks()
        store.gates[0].set()
        await blocker
        await ticks()  # the group [a, b] is being written
        assert store.writes[1] == ["a", "b"]
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        assert leader.cancelled()
        store.gates[1].set()
        outcome = await asyncio.wait_for(follower, 5)
        assert outcome.error is None and outcome.grouped_with == 2
        assert store.writes == [["x"], ["a", "b"]]

    asyncio.run(go())


def test_a_cancelled_caller_never_makes_its_group_ok_before_the_bump() -> None:
    """Cancelled while its group's cache-version bump hangs, the caller's group still answers
    only after the bump: a query following the ack must not be served an older page."""

    async def go() -> None:
        store = Store()
        store.release.set()
        store.gates = [asyncio.Event(), asyncio.Event()]
        commit = committer(store)
        blocker = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "x")))
        await ticks()
        leader = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "a")))
        follower = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "b")))
        await ticks()
        store.gates[0].set()
        await asyncio.wait_for(blocker, 5)
        store.bump_gate.clear()  # the group [a, b] is written next; its bump hangs
        store.gates[1].set()
        await ticks()
        assert store.writes == [["x"], ["a", "b"]] and store.bumps == 2
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        await ticks()
        assert not follower.done()  # never answered before the bump
        store.bump_gate.set()
        outcome = await asyncio.wait_for(follower, 5)
        assert outcome.error is None and outcome.grouped_with == 2

    asyncio.run(go())


class Chain:
    """Records each digest; each waits for ``release``; fails with ``error`` when set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.digests: list[list[str]] = []
        self.release = asyncio.Event()
        self.error = error

    async def append(self, events: Iterable[pb.Event]) -> None:
        self.digests.append([ev.event_id for ev in events])
        await self.release.wait()
        if self.error is not None:
            raise self.error


def digesting(store: Store, chain: Chain, alongside: bool) -> GroupCommitter:
    return GroupCommitter(
        store.write,
        store.bump,
        slots=1,
        max_events=100,
        write_us=Reservoir(),
        digest=chain.append,
        digest_alongside=alongside,
    )


def test_an_urgent_digest_is_written_alongside_its_events_and_answered_after_both() -> None:
    """With the digest alongside (the urgent lanes), the digest starts while the events are still
    being written, and the request is answered only once both are done: the ack never comes
    before the digest row, nor before the events."""

    async def go() -> None:
        store, chain = Store(), Chain()
        submitted = asyncio.ensure_future(digesting(store, chain, True).submit(request(pb.LANE_CRITICAL, "p0")))
        await ticks()
        assert store.writes == [["p0"]] and chain.digests == [["p0"]]  # both under way at once
        store.release.set()
        await ticks()
        assert not submitted.done()  # the events are written, the digest is not yet
        chain.release.set()
        outcome = await submitted
        assert outcome.error is None and store.bumps == 1

    asyncio.run(go())


def test_a_bulk_digest_still_follows_its_events() -> None:
    """Without it (the bulk lane), the digest starts only once the events are written."""

    async def go() -> None:
        store, chain = Store(), Chain()
        chain.release.set()
        submitted = asyncio.ensure_future(digesting(store, chain, False).submit(request(pb.LANE_NORMAL, "a")))
        await ticks()
        assert store.writes == [["a"]] and chain.digests == []
        store.release.set()
        assert (await submitted).error is None
        assert chain.digests == [["a"]]

    asyncio.run(go())


def test_a_failed_urgent_digest_fails_the_group_after_the_write_ends() -> None:
    """A digest that fails alongside a write that succeeds fails the group as retryable (the
    caller resends), and the answer waits for the write to end."""

    async def go() -> None:
        store, chain = Store(), Chain(StoreUnavailable("digest chain: timeout"))
        chain.release.set()
        submitted = asyncio.ensure_future(digesting(store, chain, True).submit(request(pb.LANE_CRITICAL, "p0")))
        await ticks()
        assert chain.digests == [["p0"]] and not submitted.done()  # the digest failed; the write goes on
        store.release.set()
        outcome = await submitted
        assert isinstance(outcome.error, StoreUnavailable) and store.bumps == 0

    asyncio.run(go())
