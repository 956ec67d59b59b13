"""The SDK's batching: full batches go at once; a partial batch waits until its first event
has waited a linger period, so a busy producer sends full batches rather than whatever
accumulated since the last tick; P0 events go at once."""

from __future__ import annotations

import time

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import assert_eventually


def _batch_sizes(client: AuditClient) -> list[int]:
    # Nothing listens on port 9, so every batch built stays open (unacknowledged).
    return sorted(batch.count for batch in list(client._open))


def test_a_burst_goes_as_full_batches_and_its_rest_after_the_linger() -> None:
    client = AuditClient("127.0.0.1:9", batch_size=500, linger_ms=200)
    try:
        for i in range(1700):  # a few ms, well inside one linger period
            client.log("auth.login.succeeded", user_id=f"u{i}")
        logged = time.monotonic()
        assert_eventually(lambda: sum(_batch_sizes(client)) == 1500, timeout=5, interval=0.01)
        assert _batch_sizes(client) == [500, 500, 500]
        assert_eventually(lambda: sum(_batch_sizes(client)) == 1700, timeout=5, interval=0.01)
        assert time.monotonic() - logged >= 0.19  # the rest waited a linger period for more
        assert _batch_sizes(client) == [200, 500, 500, 500]
    finally:
        client.close(timeout=0.1)


def test_a_lone_event_is_sent_after_one_to_two_linger_periods_and_p0_at_once() -> None:
    client = AuditClient("127.0.0.1:9", batch_size=500, linger_ms=200)
    try:
        logged = time.monotonic()
        client.log("auth.login.succeeded", user_id="u")
        client.log("data.export.bulk", user_id="u", severity=pb.P0_CRITICAL)
        assert_eventually(lambda: _batch_sizes(client) == [1], timeout=5, interval=0.01)
        assert_eventually(lambda: _batch_sizes(client) == [1, 1], timeout=5, interval=0.01)
        assert time.monotonic() - logged >= 0.2  # the normal event waited at least one linger
    finally:
        client.close(timeout=0.1)
