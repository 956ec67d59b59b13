"""A logging filter that lets a repeated message through once per interval, with a count.

A warning that repeats for every batch (Cassandra's batch-size warnings, a failing write under
load) would bury everything else in the log; one line per interval that says how many like it
were held back keeps both the signal and the rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle(logging.Filter):
    """Passes the first record of each message template per ``interval_s``; the next one to pass
    says how many were held back since. Thread-safe (the driver logs from its own threads)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, template) -> (passed at, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            passed_at, held = self._state.get(key, (float("-inf"), 0))
            if now - passed_at < self._interval_s:
                self._state[key] = (passed_at, held + 1)
                return False
            self._state[key] = (now, 0)
            if len(self._state) > 1000:
                self._state = {key: (now, 0)}
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {now - passed_at:.0f}s)"
        return True
