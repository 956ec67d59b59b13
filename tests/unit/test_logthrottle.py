"""Throttle: a repeated log message passes once per interval, then says how many were held back."""

from __future__ import annotations

import logging

from auditmesh.logthrottle import Throttle


def test_a_repeated_message_passes_once_per_interval_with_a_count() -> None:
    """Within an interval only the first record of a template passes; the first one after it
    names how many were held back; other templates are not affected."""
    now = [0.0]
    throttle = Throttle(60.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("cassandra.protocol", logging.WARNING, __file__, 1, msg, (), None)

    assert throttle.filter(record("Server warning: %s"))
    assert not any(throttle.filter(record("Server warning: %s")) for _ in range(500))
    assert throttle.filter(record("another message"))
    now[0] = 61.0
    later = record("Server warning: %s")
    assert throttle.filter(later)
    assert "(and 500 more like it in the last 61s)" in str(later.msg)
    assert not throttle.filter(record("Server warning: %s"))
