"""The client's life: close is final and idempotent, and nothing logged after it is queued."""

from __future__ import annotations

import logging
import time

import pytest

from auditmesh.client import AuditClient


def test_log_after_close_is_dropped_counted_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    """After close(), log() still returns an id but queues nothing and starts nothing again: the
    event is counted as dropped and a warning says so (nothing could ever send it)."""
    # Nothing listens on port 9: the one event logged before close stays unacknowledged.
    client = AuditClient("127.0.0.1:9", exit_timeout=0.1)
    client.log("auth.login.failed", user_id="u")
    assert client.close(timeout=0.2) is False
    task = client._task
    assert task is not None and task.done()
    with caplog.at_level(logging.WARNING, logger="auditmesh.client"):
        assert client.log("auth.login.failed", user_id="u")
    stats = client.stats
    assert (stats.logged, stats.dropped, stats.pending) == (2, 1, 1)
    assert client._task is task, "log() after close started the client again"
    assert any("after close()" in r.getMessage() for r in caplog.records)


def test_close_is_idempotent_and_flush_after_close_does_not_wait() -> None:
    """Once closed, a second close() and a flush() return at once (well under their 30 s
    timeouts), saying that an event is still pending, instead of waiting for a thread that has
    ended."""
    client = AuditClient("127.0.0.1:9")
    client.log("auth.login.failed", user_id="u")
    assert client.close(timeout=0.2) is False
    started = time.monotonic()
    assert client.close(timeout=30) is False
    assert client.flush(timeout=30) is False
    assert time.monotonic() - started < 5
