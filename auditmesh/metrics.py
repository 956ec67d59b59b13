"""Process-local counters and latency samples, published as a JSON file.

Each service process writes ``AUDITMESH_STATS_FILE`` (when set) every few seconds and at exit,
atomically; ``auditmesh status`` and the benchmarks read it. Latencies are kept as a bounded
reservoir so memory stays flat under any load.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Reservoir", "StatsPublisher", "percentile"]


def percentile(sorted_values: list[int] | list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[index])


class Reservoir:
    """A uniform sample of at most ``size`` values (Vitter's algorithm R) and their count."""

    def __init__(self, size: int = 20_000, seed: int | None = None) -> None:
        self.size = size
        self.count = 0
        self.values: list[int] = []
        self._rng = random.Random(seed)

    def add(self, value: int) -> None:
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

    def reset(self) -> None:
        self.count = 0
        self.values = []


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
