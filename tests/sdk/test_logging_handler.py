"""The stdlib logging bridge: records with audit fields become events, others are ignored."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from conftest import Mesh, Search

from auditmesh import AuditClient
from auditmesh.logging_handler import AuditHandler
from auditpb.v1 import audit_pb2 as pb


@pytest.fixture
def audit_logger(sdk_mesh: Mesh) -> Iterator[tuple[logging.Logger, AuditClient]]:
    client = AuditClient(sdk_mesh.ingest, source_service="sdk-logging")
    logger = logging.getLogger(f"sdk-logging-{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(AuditHandler(client))
    yield logger, client
    client.close(timeout=5)


def test_records_with_audit_fields_arrive_as_events_and_others_are_ignored(
    audit_logger: tuple[logging.Logger, AuditClient], search: Search, wedding: str
) -> None:
    """Four records carry ``extra={"audit": {...}}`` and three do not (one of them with other
    extras): exactly four events are logged, and Search finds them with the event type (given
    or the message), ids, severity (given or from the level), outcome, resource, attributes
    (given, extra keys, the formatted message) and the record's time."""
    logger, client = audit_logger
    logged_from_ns = time.time_ns()
    logger.info("user logged in")  # no audit fields
    logger.warning("payment %s retried", "pay-1", extra={"payment": "pay-1"})  # extras, not audit ones
    logger.error("export failed")
    logger.info(
        "payment.refund.issued",
        extra={
            "audit": {
                "user_id": "u-17",
                "organization_id": "org-3",
                "wedding_id": wedding,
                "resource_type": "payment",
                "resource_id": "pay-991",
                "source_ip": "10.1.2.3",
                "amount": "120.00",
                "attributes": {"currency": "EUR"},
            }
        },
    )
    logger.warning(
        "Guest list of %s exported by %s",
        wedding,
        "u-18",
        extra={"audit": {"event_type": "guestlist.exported", "user_id": "u-18", "wedding_id": wedding}},
    )
    logger.critical(
        "permission.changed", extra={"audit": {"user_id": "u-19", "wedding_id": wedding, "outcome": "denied"}}
    )
    logger.debug(
        "auth.login.failed",
        extra={
            "audit": {"user_id": "u-20", "wedding_id": wedding, "severity": "P1_HIGH", "outcome": pb.OUTCOME_FAILURE}
        },
    )
    logged_until_ns = time.time_ns()
    assert client.flush(timeout=30)
    assert (client.stats.logged, client.stats.acked, client.stats.rejected) == (4, 4, 0)

    events = {ev.event_type: ev for ev in search(wedding)}
    assert sorted(events) == ["auth.login.failed", "guestlist.exported", "payment.refund.issued", "permission.changed"]
    for ev in events.values():
        # occurred_at is the record's time (stored to the millisecond)
        assert logged_from_ns // 1_000_000 <= ev.occurred_at.ToMilliseconds() <= logged_until_ns // 1_000_000

    refund = events["payment.refund.issued"]
    assert (refund.user_id, refund.organization_id, refund.wedding_id) == ("u-17", "org-3", wedding)
    assert (refund.resource_type, refund.resource_id, refund.source_ip) == ("payment", "pay-991", "10.1.2.3")
    assert (refund.severity, refund.outcome) == (pb.P3_LOW, pb.OUTCOME_SUCCESS)
    assert dict(refund.attributes) == {"amount": "120.00", "currency": "EUR"}
    assert refund.source_service == "sdk-logging"

    export = events["guestlist.exported"]
    assert (export.user_id, export.severity) == ("u-18", pb.P2_MEDIUM)
    assert dict(export.attributes) == {"log.message": f"Guest list of {wedding} exported by u-18"}

    changed = events["permission.changed"]
    assert (changed.severity, changed.outcome) == (pb.P0_CRITICAL, pb.OUTCOME_DENIED)

    failed = events["auth.login.failed"]
    assert (failed.severity, failed.outcome) == (pb.P1_HIGH, pb.OUTCOME_FAILURE)
