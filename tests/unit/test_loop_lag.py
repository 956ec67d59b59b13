"""LoopLag: a blocked event loop is measured, and the stall is charged to where the time went."""

from __future__ import annotations

import asyncio
import time

from auditmesh.metrics import LoopLag


async def _stall(block: float, how: str) -> dict[str, object]:
    lag = LoopLag(interval_s=0.005, stall_ms=10)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.02)  # a few quiet ticks first
    if how == "busy":
        until = time.thread_time() + block
        while time.thread_time() < until:  # the loop's own thread computes for `block` of CPU
            pass
    else:
        time.sleep(block)  # noqa: ASYNC251 - the stall under test: the loop's thread off the CPU
    await asyncio.sleep(0.02)
    task.cancel()
    return lag.summary()


def test_a_loop_busy_in_its_own_thread_is_a_stall_on_its_own_cpu() -> None:
    summary = asyncio.run(_stall(0.08, "busy"))
    assert summary["stalls"] >= 1
    assert summary["max"] is not None and summary["max"] >= 70_000  # type: ignore[operator]
    assert summary["stall_s_own_thread"] >= 0.06  # type: ignore[operator]


def test_a_loop_off_the_cpu_is_a_stall_spent_waiting() -> None:
    summary = asyncio.run(_stall(0.08, "sleep"))
    assert summary["stalls"] >= 1
    assert summary["stall_s_waiting"] >= 0.06  # type: ignore[operator]
    assert summary["stall_s_own_thread"] < 0.03  # type: ignore[operator]
