"""``AuditHandler``: a stdlib :class:`logging.Handler` that turns audit log records into events.

Existing ``logger.info(...)`` call sites audit by adding the event's fields under one key of
``extra`` (``audit`` unless the handler is told otherwise); every other record is ignored, so
the handler can sit on the root logger beside the usual ones::

    client = AuditClient("ingest:50051", source_service="payments")
    logging.getLogger().addHandler(AuditHandler(client))

    log.info("payment.refund.issued", extra={"audit": {"user_id": "u-17", "wedding_id": "w-42",
             "resource_type": "payment", "resource_id": "pay-991", "amount": "120.00"}})

How a record becomes an event (like the OpenTelemetry log bridge maps records, and structlog
takes the message as the event name):

- ``event_type``: the mapping's ``event_type``, else the record's message template
  (``record.msg``, before %-formatting), so it must be a dotted lower-case name.
- ``user_id``, ``organization_id``, ``wedding_id``, ``resource_type``, ``resource_id``,
  ``source_ip``, ``event_id``, ``occurred_at_ns``: from the mapping, as in
  :meth:`AuditClient.log`; ``occurred_at_ns`` defaults to the record's creation time.
- ``severity``: the mapping's (a ``Severity`` value or name, ``"P1_HIGH"``), else from the
  record's level: CRITICAL -> P0_CRITICAL, ERROR -> P1_HIGH, WARNING -> P2_MEDIUM, lower ->
  P3_LOW.
- ``outcome``: the mapping's (an ``Outcome`` value or name, ``"OUTCOME_DENIED"`` or
  ``"denied"``), else OUTCOME_SUCCESS.
- ``attributes``: the mapping's ``attributes`` plus every other key of the mapping, values
  turned into strings; and ``log.message``, the formatted message, when it differs from the
  event type.

A record whose audit fields cannot be turned into an event (an unknown severity name, say)
goes to :meth:`logging.Handler.handleError`, like any handler's failure; an event that ingest
refuses (no ``user_id``, a bad event type) is reported, with the field, through the client's
``on_rejected`` and counted in ``stats.rejected``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb

__all__ = ["AuditHandler"]

_TEXT_FIELDS = ("user_id", "organization_id", "wedding_id", "resource_type", "resource_id", "source_ip")
_KNOWN = frozenset({*_TEXT_FIELDS, "event_type", "severity", "outcome", "attributes", "event_id", "occurred_at_ns"})
_MESSAGE_ATTRIBUTE = "log.message"
_MAX_MESSAGE_CHARS = 1024


def _severity_of_level(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return pb.P0_CRITICAL
    if levelno >= logging.ERROR:
        return pb.P1_HIGH
    if levelno >= logging.WARNING:
        return pb.P2_MEDIUM
    return pb.P3_LOW


def _enum(value: object, enum: Any, prefix: str) -> int:
    """An enum value from an int or a name (``"P1_HIGH"``; ``"denied"`` for ``OUTCOME_DENIED``)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        name = value.upper()
        if prefix and not name.startswith(prefix):
            name = prefix + name
        return int(enum.Value(name))
    raise TypeError(f"expected an int or a name, got {type(value).__name__}")


class AuditHandler(logging.Handler):
    """Sends log records that carry audit fields (``extra={key: {...}}``) as audit events."""

    def __init__(
        self,
        client: AuditClient,
        *,
        key: str = "audit",
        level: int = logging.NOTSET,
        flush_timeout: float = 5.0,
    ) -> None:
        """``client`` is shared, not owned: closing the handler leaves it open. ``key`` names the
        ``extra`` entry holding the audit fields; ``flush_timeout`` bounds :meth:`flush`."""
        super().__init__(level)
        self.client = client
        self.key = key
        self.flush_timeout = flush_timeout

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__.get(self.key)
        if not isinstance(fields, Mapping):
            return
        try:
            self._log(record, fields)
        except Exception:
            self.handleError(record)

    def _log(self, record: logging.LogRecord, fields: Mapping[str, Any]) -> None:
        event_type = fields.get("event_type") or record.msg
        if not isinstance(event_type, str):
            raise TypeError(f"event_type must be a string, got {type(event_type).__name__}")
        attributes: dict[str, str] = {}
        given = fields.get("attributes")
        if given:
            attributes.update((str(k), str(v)) for k, v in given.items())
        for name, value in fields.items():
            if name not in _KNOWN:
                attributes[str(name)] = str(value)
        message = record.getMessage()
        if message != event_type:
            attributes[_MESSAGE_ATTRIBUTE] = message[:_MAX_MESSAGE_CHARS]
        text = {name: "" if fields.get(name) is None else str(fields[name]) for name in _TEXT_FIELDS}
        severity = fields.get("severity")
        outcome = fields.get("outcome")
        occurred = fields.get("occurred_at_ns")
        self.client.log(
            event_type,
            user_id=text["user_id"],
            organization_id=text["organization_id"],
            wedding_id=text["wedding_id"],
            severity=_severity_of_level(record.levelno) if severity is None else _enum(severity, pb.Severity, ""),
            outcome=pb.OUTCOME_SUCCESS if outcome is None else _enum(outcome, pb.Outcome, "OUTCOME_"),
            resource_type=text["resource_type"],
            resource_id=text["resource_id"],
            source_ip=text["source_ip"],
            attributes=attributes or None,
            event_id=None if fields.get("event_id") is None else str(fields["event_id"]),
            occurred_at_ns=round(record.created * 1e9) if occurred is None else int(occurred),
        )

    def flush(self) -> None:
        """Wait, at most ``flush_timeout`` seconds, until the events logged so far are acknowledged."""
        self.client.flush(self.flush_timeout)
