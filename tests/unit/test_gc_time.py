"""GcTime: every collection of the cyclic garbage collector is counted by generation and timed."""

from __future__ import annotations

import gc

import pytest

from auditmesh import metrics
from auditmesh.metrics import GcTime


def test_collections_are_counted_by_generation_and_timed() -> None:
    gc_time = GcTime()
    gc_time.install()
    try:
        for _ in range(1000):
            cycle: list[object] = []
            cycle.append(cycle)
        gc.collect(2)
        gc.collect(0)
    finally:
        gc_time.uninstall()
    summary = gc_time.summary()
    assert summary["collections"][2] >= 1 and summary["collections"][0] >= 1
    assert summary["seconds"][2] > 0
    assert summary["count"] == sum(summary["collections"])

    gc_time.reset()
    gc.collect()  # uninstalled: no longer counted
    assert gc_time.summary()["collections"] == [0, 0, 0]


def test_the_frozen_count_is_read_once_a_minute_once_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting frozen objects walks every one of them: a summary every two seconds must not."""
    counts = iter([0, 0, 90_000, 91_000])
    reads: list[float] = []
    clock = [1000.0]

    def get_freeze_count() -> int:
        reads.append(clock[0])
        return next(counts)

    monkeypatch.setattr(metrics.gc, "get_freeze_count", get_freeze_count)
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    gc_time = GcTime()
    frozen = []
    for step in (0, 2, 2, 2, 50, 10):  # before the service froze its objects, then after
        clock[0] += step
        frozen.append(gc_time.summary()["frozen"])
    assert frozen == [0, 0, 90_000, 90_000, 90_000, 91_000]
    assert reads == [1000.0, 1002.0, 1004.0, 1066.0]
