"""Per-event validation at the ingest edge.

:func:`validate_batch` never raises for a bad event: it returns the indexes of the valid events
and one :class:`~auditpb.v1.audit_pb2.Rejection` per bad one (field and reason), so valid
neighbours are stored. Limits are configuration (:class:`Limits`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from auditmesh.config import Env
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Limits", "check_id", "check_timestamp", "validate_batch", "validate_slices"]

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
_ID = re.compile(r"[\x21-\x7e]+")
_SEVERITIES = frozenset(v for v in pb.Severity.values() if v != pb.SEVERITY_UNSPECIFIED)
_OUTCOMES = frozenset(v for v in pb.Outcome.values() if v != pb.OUTCOME_UNSPECIFIED)
# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_NANOS = 999_999_999


def check_timestamp(ts: Timestamp) -> str | None:
    """Why ``ts`` is not a valid protobuf Timestamp, or None when it is."""
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS:
        return f"seconds {ts.seconds} outside 0001-01-01..9999-12-31"
    if not 0 <= ts.nanos <= _MAX_NANOS:
        return f"nanos {ts.nanos} outside 0..{_MAX_NANOS}"
    return None


def check_id(value: str, max_len: int) -> str | None:
    """Why ``value`` cannot be an id of a stored event (they are printable ASCII without spaces,
    at most ``max_len`` characters), or None when it can; the value itself is not echoed."""
    if len(value) > max_len:
        return f"longer than {max_len} characters"
    if not _ID.fullmatch(value):
        return "must be printable ASCII without spaces"
    return None


@dataclass(frozen=True)
class Limits:
    """Bounds on what one event and one batch may carry."""

    max_batch_events: int = 2000
    """Events per batch; more is RESOURCE_EXHAUSTED (AUDITMESH_MAX_BATCH_EVENTS)."""
    max_message_bytes: int = 8 * 1024 * 1024
    """Bytes per gRPC message; more is RESOURCE_EXHAUSTED (AUDITMESH_MAX_MESSAGE_BYTES)."""
    max_id_len: int = 128
    """Characters in event_id, wedding_id, organization_id, user_id (AUDITMESH_MAX_ID_LEN)."""
    max_text_len: int = 256
    """Characters in event_type, source and resource fields (AUDITMESH_MAX_TEXT_LEN)."""
    max_attributes: int = 64
    """Attributes per event (AUDITMESH_MAX_ATTRIBUTES)."""
    max_attribute_bytes: int = 8192
    """Bytes of all attribute keys and values of one event (AUDITMESH_MAX_ATTRIBUTE_BYTES)."""
    max_past_s: int = 7 * 24 * 3600
    """How old occurred_at may be, in seconds (AUDITMESH_MAX_PAST_S)."""
    max_future_s: int = 300
    """How far ahead of ingest's clock occurred_at may be, in seconds (AUDITMESH_MAX_FUTURE_S)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        e = Env(env)
        return cls(
            max_batch_events=e.integer("AUDITMESH_MAX_BATCH_EVENTS", cls.max_batch_events, minimum=1),
            max_message_bytes=e.integer("AUDITMESH_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1024),
            max_id_len=e.integer("AUDITMESH_MAX_ID_LEN", cls.max_id_len, minimum=8),
            max_text_len=e.integer("AUDITMESH_MAX_TEXT_LEN", cls.max_text_len, minimum=8),
            max_attributes=e.integer("AUDITMESH_MAX_ATTRIBUTES", cls.max_attributes),
            max_attribute_bytes=e.integer("AUDITMESH_MAX_ATTRIBUTE_BYTES", cls.max_attribute_bytes),
            max_past_s=e.integer("AUDITMESH_MAX_PAST_S", cls.max_past_s),
            max_future_s=e.integer("AUDITMESH_MAX_FUTURE_S", cls.max_future_s),
        )


def _check_event(ev: pb.Event, limits: Limits, now_s: int) -> tuple[str, str] | None:
    """Return (field, reason) for the first problem of ``ev``, or None when it is valid.

    The definition of a valid event; :class:`_Bounds` only finds most valid ones sooner."""
    max_id = limits.max_id_len
    event_id = ev.event_id
    if not event_id:
        return "event_id", "required"
    if len(event_id) > max_id:
        return "event_id", f"longer than {max_id} characters"
    if not _ID.fullmatch(event_id):
        return "event_id", "must be printable ASCII without spaces"
    if not ev.user_id:
        return "user_id", "required"
    for name, value in (
        ("user_id", ev.user_id),
        ("wedding_id", ev.wedding_id),
        ("organization_id", ev.organization_id),
    ):
        if len(value) > max_id:
            return name, f"longer than {max_id} characters"
    event_type = ev.event_type
    if not event_type:
        return "event_type", "required"
    if len(event_type) > limits.max_text_len or not _EVENT_TYPE.fullmatch(event_type):
        return "event_type", "must be dotted lower-case words, e.g. auth.login.failed"
    if ev.severity not in _SEVERITIES:
        return "severity", f"unknown severity {ev.severity}"
    if ev.outcome not in _OUTCOMES:
        return "outcome", f"unknown outcome {ev.outcome}"
    seconds = ev.occurred_at.seconds
    if seconds == 0 and ev.occurred_at.nanos == 0:
        return "occurred_at", "required"
    bad_time = check_timestamp(ev.occurred_at)
    if bad_time:
        return "occurred_at", bad_time
    if seconds > now_s + limits.max_future_s:
        return "occurred_at", f"more than {limits.max_future_s}s in the future"
    if seconds < now_s - limits.max_past_s:
        return "occurred_at", f"more than {limits.max_past_s}s in the past"
    max_text = limits.max_text_len
    for name, value in (
        ("source_service", ev.source_service),
        ("source_ip", ev.source_ip),
        ("resource_type", ev.resource_type),
        ("resource_id", ev.resource_id),
    ):
        if len(value) > max_text:
            return name, f"longer than {max_text} characters"
    attributes = ev.attributes
    if attributes:
        return _check_attributes(attributes, limits)
    return None


def _check_attributes(attributes: Mapping[str, str], limits: Limits) -> tuple[str, str] | None:
    if len(attributes) > limits.max_attributes:
        return "attributes", f"more than {limits.max_attributes} entries"
    size = 0
    for key, value in attributes.items():
        if not key:
            return "attributes", "empty key"
        size += len(key.encode()) + len(value.encode())
        if size > limits.max_attribute_bytes:
            return f"attributes[{key[:64]}]", f"attributes exceed {limits.max_attribute_bytes} bytes"
    return None


class _Bounds:
    """The limits as one batch's events are checked against them, for :meth:`valid`."""

    def __init__(self, limits: Limits, now_s: int) -> None:
        self.limits = limits
        self.max_id = limits.max_id_len
        self.max_text = limits.max_text_len
        self.oldest = max(_MIN_SECONDS, now_s - limits.max_past_s)
        self.newest = min(_MAX_SECONDS, now_s + limits.max_future_s)

    def valid(self, ev: pb.Event, event_id: str) -> bool:
        """True only for events :func:`_check_event` accepts (``event_id`` is ``ev``'s, read once
        by the caller); False means "ask it", not "invalid".

        Each field is read once, and the checks are the cheap forms of the full ones: event
        types already matched are looked up, and an id is printable ASCII without spaces by
        three string methods rather than a regex (which costs about three times as much)."""
        max_id = self.max_id
        max_text = self.max_text
        user_id = ev.user_id
        event_type = ev.event_type
        occurred = ev.occurred_at
        seconds = occurred.seconds
        attributes = ev.attributes
        return (
            0 < len(event_id) <= max_id
            and 0 < len(user_id) <= max_id
            and len(ev.wedding_id) <= max_id
            and len(ev.organization_id) <= max_id
            and len(event_type) <= max_text
            and event_type in _KNOWN_TYPES
            and ev.severity in _SEVERITIES
            and ev.outcome in _OUTCOMES
            and self.oldest <= seconds <= self.newest
            and (seconds != 0 or occurred.nanos != 0)
            and 0 <= occurred.nanos <= _MAX_NANOS
            and len(ev.source_service) <= max_text
            and len(ev.source_ip) <= max_text
            and len(ev.resource_type) <= max_text
            and len(ev.resource_id) <= max_text
            and (not attributes or _check_attributes(attributes, self.limits) is None)
            and event_id.isascii()
            and event_id.isprintable()
            and " " not in event_id
        )


_KNOWN_TYPES: set[str] = set()
"""Event types of valid events seen (so they match ``_EVENT_TYPE``), at most
``_MAX_KNOWN_TYPES`` of them: a caller inventing types cannot grow it without bound."""
_MAX_KNOWN_TYPES = 4096


def _learn_type(event_type: str) -> None:
    if len(_KNOWN_TYPES) < _MAX_KNOWN_TYPES:
        _KNOWN_TYPES.add(event_type)


def validate_batch(
    events: Sequence[pb.Event], limits: Limits, now_s: int | None = None
) -> tuple[list[int], list[pb.Rejection]]:
    """Split a batch into the indexes of valid events and rejections of the others.

    A repeated ``event_id`` within one batch keeps its first occurrence and rejects the rest.
    """
    valid: list[int] = []
    rejected: list[pb.Rejection] = []
    for part_valid, part_rejected in validate_slices(events, limits, max(len(events), 1), now_s):
        valid += part_valid
        rejected += part_rejected
    return valid, rejected


def validate_slices(
    events: Sequence[pb.Event], limits: Limits, size: int, now_s: int | None = None
) -> Iterator[tuple[list[int], list[pb.Rejection]]]:
    """:func:`validate_batch` ``size`` events at a time (duplicates are still found across the
    whole batch), so that a caller on an event loop can let other work run between slices."""
    if now_s is None:
        now_s = int(time.time())
    bounds = _Bounds(limits, now_s)
    seen: set[str] = set()
    for begin in range(0, len(events), size):
        valid: list[int] = []
        rejected: list[pb.Rejection] = []
        for index, ev in enumerate(events[begin : begin + size], begin):
            event_id = ev.event_id
            if bounds.valid(ev, event_id) and event_id not in seen:
                seen.add(event_id)
                valid.append(index)
                continue
            problem = _check_event(ev, limits, now_s)
            if problem is None:
                _learn_type(ev.event_type)
                if event_id not in seen:
                    seen.add(event_id)
                    valid.append(index)
                    continue
                problem = ("event_id", "duplicate event_id within the batch")
            rejected.append(pb.Rejection(index=index, event_id=event_id[:128], field=problem[0], reason=problem[1]))
        yield valid, rejected
