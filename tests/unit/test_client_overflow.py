"""The SDK's overflow policy: bounded buffer, counted drops, warned once per interval, P0 never dropped."""

from __future__ import annotations

import logging

import pytest

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb


def test_full_buffer_drops_only_non_critical(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 9: every batch stays unacknowledged, so the bound is reached.
    client = AuditClient("127.0.0.1:9", max_pending_events=100)
    with caplog.at_level(logging.WARNING, logger="auditmesh.client"):
        for i in range(150):
            client.log("auth.login.failed", user_id=f"u{i}")
        critical = [client.log("data.export.bulk", user_id="u", severity=pb.P0_CRITICAL) for _ in range(10)]
    stats = client.stats
    assert stats.dropped == 50
    assert stats.pending == 110  # the 100 that fit and every P0 event
    assert len(set(critical)) == 10
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1, "drops are logged once per interval, not per event"
    assert client.close(timeout=0.5) is False  # nothing could be acknowledged
