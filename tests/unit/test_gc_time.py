"""GcTime: every collection of the cyclic garbage collector is counted by generation and timed."""

from __future__ import annotations

import gc

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
