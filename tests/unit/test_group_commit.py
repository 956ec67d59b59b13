"""Group commit writes waiting requests together, highest lane first, and answers each one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from auditmesh.errors import PermanentError, StoreUnavailable
from auditmesh.metrics import Reservoir
from auditmesh.store import WriteStats
from auditpb.v1 import audit_pb2 as pb
from services.processor.group_commit import GroupCommitter


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


def committer(store: Store, slots: int = 1, max_events: int = 100) -> GroupCommitter:
    return GroupCommitter(store.write, store.bump, slots=slots, max_events=max_events, write_us=Reservoir())


def test_waiting_requests_are_written_together_highest_lane_first() -> None:
    async def go() -> None:
        store = Store()
        commit = committer(store)
        first = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "a")))
        await asyncio.sleep(0)  # "a" holds the only slot
        rest = [
            asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "b", "c"))),
            asyncio.create_task(commit.submit(request(pb.LANE_WEDDING_DAY, "d"))),
            asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "e"))),
        ]
        await asyncio.sleep(0)
        store.release.set()
        outcomes = await asyncio.gather(first, *rest)
        assert store.writes == [["a"], ["d", "b", "c", "e"]]
        assert [o.grouped_with for o in outcomes] == [1, 3, 3, 3]
        assert all(o.error is None and o.stats is not None for o in outcomes)
        assert store.bumps == 2  # once per group, not per request

    asyncio.run(go())


def test_groups_stop_at_max_events() -> None:
    async def go() -> None:
        store = Store()
        store.release.set()
        commit = committer(store, max_events=3)
        await asyncio.gather(*(commit.submit(request(pb.LANE_NORMAL, f"{i}a", f"{i}b")) for i in range(3)))
        assert all(len(ids) <= 3 for ids in store.writes)
        assert sorted(i for ids in store.writes for i in ids) == ["0a", "0b", "1a", "1b", "2a", "2b"]

    asyncio.run(go())


def test_a_permanent_failure_fails_only_its_own_request() -> None:
    async def go() -> None:
        store = Store(fail_on="bad", error=PermanentError("cassandra: InvalidRequest"))
        commit = committer(store)
        blocker = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "x")))
        await asyncio.sleep(0)
        good = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "ok")))
        bad = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "bad")))
        await asyncio.sleep(0)
        store.release.set()
        await blocker
        assert (await good).error is None
        assert isinstance((await bad).error, PermanentError)

    asyncio.run(go())


def test_an_unavailable_store_fails_the_whole_group_as_retryable() -> None:
    async def go() -> None:
        store = Store(fail_on="a", error=StoreUnavailable("cassandra: NoHostAvailable"))
        store.release.set()
        commit = committer(store)
        outcomes = await asyncio.gather(*(commit.submit(request(pb.LANE_NORMAL, i)) for i in "abc"))
        assert isinstance(outcomes[0].error, StoreUnavailable)
        assert store.bumps == sum(o.error is None for o in outcomes)

    asyncio.run(go())


def test_a_cancelled_writer_still_answers_the_requests_it_took() -> None:
    async def go() -> None:
        store = Store()
        store.release.set()
        store.gates = [asyncio.Event(), asyncio.Event()]
        commit = committer(store)
        blocker = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "x")))
        await asyncio.sleep(0)
        leader = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "a")))
        follower = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "b")))
        await asyncio.sleep(0)
        store.gates[0].set()
        await blocker
        for _ in range(10):  # let the leader start writing its group, [a, b]
            await asyncio.sleep(0)
        assert store.writes[1] == ["a", "b"]
        leader.cancel()
        outcome = await asyncio.wait_for(follower, 5)
        assert isinstance(outcome.error, StoreUnavailable)
        assert leader.cancelled()

    asyncio.run(go())


def test_a_writer_cancelled_after_the_write_answers_retryable_not_ok() -> None:
    async def go() -> None:
        store = Store()
        store.release.set()
        store.bump_gate.clear()  # the write succeeds, the cache-version bump hangs
        store.gates = [asyncio.Event()]
        commit = committer(store)
        blocker = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "x")))
        await asyncio.sleep(0)
        leader = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "a")))
        follower = asyncio.create_task(commit.submit(request(pb.LANE_NORMAL, "b")))
        await asyncio.sleep(0)
        blocker.cancel()  # cancelled while writing "x"; its slot passes to "a", which writes [a, b]
        await asyncio.gather(blocker, return_exceptions=True)
        for _ in range(10):
            await asyncio.sleep(0)
        assert store.writes[1] == ["a", "b"] and store.bumps == 1  # written, bump pending
        leader.cancel()
        outcome = await asyncio.wait_for(follower, 5)
        assert isinstance(outcome.error, StoreUnavailable)  # never "ok" without the bump

    asyncio.run(go())
