"""The field mapping: Sigma field names a rule may use, and where each is read in a ``pb.Event``.

A rule names fields as the platform's SIEM would (``user_id``, ``source_ip``, ``record_count``);
this table is the one place that says which event field or attribute each name reads, so the
same rule files can be shared. ``attributes.<key>`` reads any attribute by its own name. A name
that is neither here nor ``attributes.*`` is an error when the rule is loaded, never a silent
non-match at run time.

``organization_role`` is derived: ``none`` when the event has a wedding and an organization and
the organization holds no role on that wedding (see :class:`RoleDirectory`), ``member`` when it
does, empty otherwise.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Protocol

from auditpb.v1 import audit_pb2 as pb

__all__ = ["FIELDS", "ATTRIBUTE_PREFIX", "Getter", "RoleDirectory", "folded_getter", "getter", "is_known"]

ATTRIBUTE_PREFIX = "attributes."


class RoleDirectory(Protocol):
    def has_role(self, wedding_id: str, organization_id: str) -> bool | None:
        """True or False when the relation knows the wedding; None when it does not."""


Getter = Callable[[pb.Event, RoleDirectory | None], str | None]


def _field(name: str) -> Getter:
    def get(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
        value: str = getattr(ev, name)
        return value or None

    return get


def _attribute(key: str) -> Getter:
    def get(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
        return ev.attributes.get(key)

    return get


_SEVERITIES = {number: name for name, number in pb.Severity.items()}
_OUTCOMES = {number: name.removeprefix("OUTCOME_").lower() for name, number in pb.Outcome.items()}


def _severity(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
    return _SEVERITIES.get(ev.severity)


def _outcome(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
    return _OUTCOMES.get(ev.outcome)


def _priority(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
    return str(ev.priority)


def _organization_role(ev: pb.Event, roles: RoleDirectory | None) -> str | None:
    if roles is None or not ev.wedding_id or not ev.organization_id:
        return None
    known = roles.has_role(ev.wedding_id, ev.organization_id)
    if known is None:
        return None
    return "member" if known else "none"


_EVENT_FIELDS = (
    "event_id",
    "wedding_id",
    "organization_id",
    "user_id",
    "event_type",
    "source_service",
    "source_ip",
    "resource_type",
    "resource_id",
)

FIELDS: Mapping[str, Getter] = {
    **{name: _field(name) for name in _EVENT_FIELDS},
    "severity": _severity,  # the enum's name: P0_CRITICAL, P1_HIGH, P2_MEDIUM, P3_LOW
    "outcome": _outcome,  # success, failure, denied
    "priority": _priority,
    "organization_role": _organization_role,
    # Attributes with a name of their own in the rule pack.
    "record_count": _attribute("record_count"),
    "role": _attribute("role"),
    "previous_role": _attribute("previous_role"),
    "target_user_id": _attribute("target_user_id"),
    "export_format": _attribute("format"),
}
"""Sigma field name -> how it is read from an event."""


def is_known(name: str) -> bool:
    return name in FIELDS or (name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX))


@functools.lru_cache(maxsize=1024)
def getter(name: str) -> Getter:
    """How to read ``name``; KeyError when the mapping has no such field."""
    found = FIELDS.get(name)
    if found is not None:
        return found
    if name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX):
        return _attribute(name[len(ATTRIBUTE_PREFIX) :])
    raise KeyError(name)


@functools.lru_cache(maxsize=1024)
def folded_getter(name: str) -> Getter:
    """The case-folded value of ``name`` (what a plain, case-insensitive Sigma string is compared
    with); KeyError when the mapping has no such field. Reads event fields and the enums without
    going through :func:`getter`, since it runs for every event."""
    if name in _EVENT_FIELDS:
        read = operator.attrgetter(name)

        def get_field(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
            value: str = read(ev)
            return value.casefold() if value else None

        return get_field
    if name in ("severity", "outcome"):
        table = {k: v.casefold() for k, v in (_SEVERITIES if name == "severity" else _OUTCOMES).items()}
        read_enum = operator.attrgetter(name)

        def get_enum(ev: pb.Event, _roles: RoleDirectory | None) -> str | None:
            return table.get(read_enum(ev))

        return get_enum
    get = getter(name)

    def get_other(ev: pb.Event, roles: RoleDirectory | None) -> str | None:
        value = get(ev, roles)
        return None if value is None else value.casefold()

    return get_other
