"""Process-local counters and latency samples, published as a JSON file.

Each service process writes ``AUDITMESH_STATS_FILE`` (when set) every few seconds and at exit,
atomically; ``auditmesh status`` and the benchmarks read it. Latencies are kept as a bounded
reservoir so memory stays flat under any load, and as cumulative histogram buckets that the
metrics endpoint (:mod:`auditmesh.telemetry.prometheus`) exports.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUCKETS_US", "GcTime", "LoopLag", "Reservoir", "RuntimeStats", "StatsPublisher", "percentile"]

BUCKETS_US: tuple[int, ...] = (
    *(10, 25, 50, 100, 250, 500),
    *(1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000),
    *(1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000),
)
"""Upper bounds (microseconds) of the histogram buckets every reservoir keeps: 10 us to 30 s,
fine enough around the budgets (500 us, 1 ms, 5 ms, 10 ms, 100 ms) to tell pass from fail."""


def percentile(sorted_values: list[int] | list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[index])


class Reservoir:
    """A uniform sample of at most ``size`` values (Vitter's algorithm R) and their count, plus
    cumulative histogram buckets (counts per bucket of ``bounds`` and the sum of all values).

    ``reset()`` starts a new sample (benchmarks reset between phases) but leaves the buckets
    alone: they count since the process started, as a Prometheus histogram must.
    """

    def __init__(self, size: int = 20_000, seed: int | None = None, bounds: Sequence[int] = BUCKETS_US) -> None:
        self.size = size
        self.count = 0
        self.values: list[int] = []
        self._rng = random.Random(seed)
        self.bounds = tuple(bounds)
        self._buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0

    def add(self, value: int) -> None:
        self._buckets[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.size:
                self.values[slot] = value

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.values)
        return {
            "count": self.count,
            "p50": percentile(ordered, 50),
            "p99": percentile(ordered, 99),
            "p999": percentile(ordered, 99.9),
            "max": float(ordered[-1]) if ordered else None,
        }

    def histogram(self) -> tuple[list[int], int]:
        """Cumulative counts per bound (the last is +Inf, the total) and the sum of every value
        added since the reservoir was made. Safe to call from another thread: it copies."""
        counts = list(self._buckets)
        total = self._sum
        running = 0
        for i, n in enumerate(counts):
            running += n
            counts[i] = running
        return counts, total

    def reset(self) -> None:
        self.count = 0
        self.values = []


class LoopLag:
    """How late the event loop runs a timer: every ``interval_s`` a sleep is timed, and what it
    overran by goes into a reservoir (microseconds). Anything the loop does in one go (a long
    callback, the garbage collector) or the CPU it does not get shows up here, and delays every
    request the process is serving by as much.

    The overrun of each stall (``stall_ms`` or more) is split in proportion to where the
    interval's time went: the loop's own thread on the CPU; the process's other threads on the
    CPU (which may hold the GIL the loop needs; time they ran in parallel with the loop counts
    too, so this share is an upper bound); and the rest, the process off the CPU (waiting for a
    core, or for the GIL held by a thread that is itself waiting for one).
    """

    def __init__(self, interval_s: float = 0.02, stall_ms: float = 10.0) -> None:
        self.interval_s = interval_s
        self.stall_s = stall_ms / 1000
        self.lag_us = Reservoir(10_000)
        self.stalls = 0
        self.stall_s_own = self.stall_s_other_threads = self.stall_s_waiting = 0.0

    async def run(self) -> None:
        interval = self.interval_s
        clock, thread_cpu, process_cpu = time.perf_counter, time.thread_time, time.process_time
        while True:
            wall, own, total = clock(), thread_cpu(), process_cpu()
            await asyncio.sleep(interval)
            wall, own, total = clock() - wall, thread_cpu() - own, process_cpu() - total
            lag = max(0.0, wall - interval)
            self.lag_us.add(int(lag * 1_000_000))
            if lag >= self.stall_s:
                self.stalls += 1
                own = min(own, wall)
                others = min(max(0.0, total - own), wall - own)
                share = lag / wall
                self.stall_s_own += own * share
                self.stall_s_other_threads += others * share
                self.stall_s_waiting += (wall - own - others) * share

    def summary(self) -> dict[str, Any]:
        return {
            **self.lag_us.summary(),
            "stalls": self.stalls,
            "stall_s_own_thread": round(self.stall_s_own, 3),
            "stall_s_other_threads": round(self.stall_s_other_threads, 3),
            "stall_s_waiting": round(self.stall_s_waiting, 3),
        }

    def reset(self) -> None:
        self.lag_us.reset()
        self.stalls = 0
        self.stall_s_own = self.stall_s_other_threads = self.stall_s_waiting = 0.0


_FROZEN_EVERY_S = 60.0


class GcTime:
    """Time the process spends in Python's cyclic garbage collector, per generation. A
    collection holds the GIL from start to end, so it stops every Python thread of the process,
    the event loop's included, whichever thread's allocation triggered it."""

    def __init__(self) -> None:
        self.pause_us = Reservoir(10_000)
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._frozen = 0
        self._frozen_read = -math.inf

    def install(self) -> None:
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += elapsed
        self.pause_us.add(int(elapsed * 1_000_000))

    def summary(self) -> dict[str, Any]:
        return {
            **self.pause_us.summary(),
            "collections": list(self.collections),
            "seconds": [round(s, 3) for s in self.seconds],
            "threshold": list(gc.get_threshold()),
            "frozen": self.frozen(),
        }

    def frozen(self) -> int:
        """Objects frozen out of the collector's reach (``gc.freeze``). Counting them walks a
        linked list of every one, ~20 ms for a processor's 90K on a busy host, so once there are
        some the count is re-read at most every ``_FROZEN_EVERY_S`` (services freeze once, at
        startup)."""
        now = time.monotonic()
        if not self._frozen or now - self._frozen_read >= _FROZEN_EVERY_S:
            self._frozen = gc.get_freeze_count()
            self._frozen_read = now
        return self._frozen

    def reset(self) -> None:
        self.pause_us.reset()
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]


class RuntimeStats:
    """What stops a service's event loop: its lag (:class:`LoopLag`) and the garbage
    collector's pauses (:class:`GcTime`), measured, published and reset together."""

    def __init__(self) -> None:
        self.lag = LoopLag()
        self.gc_time = GcTime()
        self._lagging: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.gc_time.install()
        self._lagging = asyncio.create_task(self.lag.run())

    def stop(self) -> None:
        if self._lagging is not None:
            self._lagging.cancel()
            self.gc_time.uninstall()
            self._lagging = None

    def summary(self) -> dict[str, Any]:
        return {"loop_lag_us": self.lag.summary(), "gc": self.gc_time.summary()}

    def reset(self) -> None:
        self.lag.reset()
        self.gc_time.reset()


class StatsPublisher:
    """Writes ``collect()`` as JSON to a file, periodically and on ``publish()``."""

    def __init__(self, path: str | None, collect: Callable[[], dict[str, Any]]) -> None:
        self._path = Path(path) if path else None
        self._collect = collect

    def publish(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self._collect()))
        tmp.replace(self._path)

    async def run(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.publish()
