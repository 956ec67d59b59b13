"""Ingest's in-flight budget: room is handed to waiters in arrival order, and a waiter that gives
up (cancelled, timed out) holds nothing afterwards, however its wait ends."""

from __future__ import annotations

import asyncio

import pytest

from auditmesh.errors import Overloaded
from services.ingest.router import Budget


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiters_cancelled_twice_while_contending_leave_the_budget_working() -> None:
    """The ingest wedge: calls that end while their batches wait for room cancel each wait twice
    (the call, then its stream), in one turn of the loop or in two. Every later release and
    acquire must still go through, and the budget must count exactly what its holders hold."""

    async def scenario() -> None:
        budget = Budget(max_events=2, max_bytes=1 << 30)
        await budget.acquire(2, 1, 1.0)
        waiters = [asyncio.ensure_future(budget.acquire(1, 1, 5.0)) for _ in range(6)]
        await _settle()
        assert budget.waiting == 6
        budget.release(2, 1)  # room for the first two: handed over, neither has resumed yet
        for waiter in waiters[1:3]:  # one granted, one waiting: twice in one turn
            assert waiter.cancel()
            waiter.cancel()
        for waiter in waiters[3:]:  # still waiting: once, then again on the next turn
            assert waiter.cancel()
        await asyncio.sleep(0)
        for waiter in waiters[3:]:
            waiter.cancel()
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        assert outcomes[0] is None, outcomes
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[1:]), outcomes
        assert (budget.events, budget.bytes, budget.waiting) == (1, 1, 0)
        budget.release(1, 1)
        await asyncio.wait_for(budget.acquire(2, 2, 1.0), 1.0)
        assert budget.events == 2

    asyncio.run(scenario())


def test_room_given_back_by_a_cancelled_waiter_goes_to_the_next_one() -> None:
    async def scenario() -> None:
        budget = Budget(max_events=1, max_bytes=1 << 30)
        await budget.acquire(1, 1, 1.0)
        first = asyncio.ensure_future(budget.acquire(1, 1, 5.0))
        second = asyncio.ensure_future(budget.acquire(1, 1, 5.0))
        await _settle()
        budget.release(1, 1)  # handed to the first, which is cancelled before it resumes
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1.0)
        assert (budget.events, budget.waiting) == (1, 0)

    asyncio.run(scenario())


def test_room_handed_over_as_the_wait_is_cancelled_is_given_back() -> None:
    async def scenario() -> None:
        budget = Budget(max_events=1, max_bytes=1 << 30)
        await budget.acquire(1, 10, 1.0)
        waiter = asyncio.ensure_future(budget.acquire(1, 20, 5.0))
        await _settle()
        budget.release(1, 10)  # handed to the waiter, which has not run yet
        assert (budget.events, budget.bytes) == (1, 20)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (budget.events, budget.bytes, budget.waiting) == (0, 0, 0)

    asyncio.run(scenario())


def test_a_timed_out_waiter_is_overloaded_and_lets_those_behind_it_in() -> None:
    async def scenario() -> None:
        budget = Budget(max_events=10, max_bytes=1 << 30)
        await budget.acquire(5, 1, 1.0)
        big = asyncio.ensure_future(budget.acquire(8, 1, 0.05))  # waits: 5 + 8 > 10
        await _settle()
        small = asyncio.ensure_future(budget.acquire(2, 1, 5.0))  # fits, but queues behind the first
        await _settle()
        assert not small.done()
        with pytest.raises(Overloaded):
            await big
        await asyncio.wait_for(small, 1.0)
        assert (budget.events, budget.waiting) == (7, 0)

    asyncio.run(scenario())


def test_waiters_are_admitted_in_arrival_order() -> None:
    async def scenario() -> None:
        budget = Budget(max_events=3, max_bytes=1 << 30)
        await budget.acquire(3, 1, 1.0)
        order: list[int] = []

        async def wait(n: int, events: int) -> None:
            await budget.acquire(events, 1, 5.0)
            order.append(n)

        tasks = [asyncio.ensure_future(wait(n, events)) for n, events in enumerate((2, 1, 3))]
        await _settle()
        budget.release(3, 1)
        await _settle()
        assert order == [0, 1]  # the third does not fit until the others release
        budget.release(3, 2)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2] and budget.events == 3

    asyncio.run(scenario())
