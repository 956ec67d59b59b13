"""Token buckets per caller: a caller over its rate waits its turn, others are unaffected."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

_MAX_SUBJECTS = 100_000


class RateLimiter:
    """One token bucket per key (a token subject), refilled at ``rate`` per second up to ``burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, cost: float = 1.0) -> int:
        """Take ``cost`` from ``key``'s bucket: 0 when it had them, else the milliseconds until
        it will (nothing is taken then). A cost above the burst is charged as the burst, so one
        large request is slowed, never refused forever."""
        now = self._clock()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        cost = min(cost, self.burst)
        if tokens >= cost:
            if len(self._buckets) >= _MAX_SUBJECTS and key not in self._buckets:
                self._buckets.clear()  # a bound on memory; a full bucket is every caller's start
            self._buckets[key] = (tokens - cost, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, int((cost - tokens) / self.rate * 1000 + 0.999))
