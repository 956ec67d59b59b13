"""Evaluation of a rule set over one batch of events, with no I/O.

The result of a batch is what the batch contributes, aggregated: one :class:`Hit` per event that
matches a detection rule raising alerts one by one, and one :class:`Update` per (rule, group)
carrying everything the batch adds to that group's correlation or suppression state. The
updates of a batch go to Redis in one call (:mod:`auditmesh.detection.state`), so its cost
does not grow with the number of events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from auditmesh.detection import fields
from auditmesh.detection.fields import RoleDirectory
from auditmesh.detection.rules import Correlation, Detection, RuleSet
from auditmesh.store import occurred_ms
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Evaluation", "Hit", "SAMPLE", "Update", "evaluate"]

SAMPLE = 20
"""Triggering event ids kept per alert; the count says how many there were in all."""


@dataclass
class Hit:
    """One event matched a detection rule that raises an alert per event."""

    rule: Detection
    event: pb.Event


@dataclass
class Update:
    """What one batch adds to one group of a correlation (or of a suppressed detection rule)."""

    rule: Correlation | Detection
    group: tuple[tuple[str, str], ...]
    members: dict[str, int] = field(default_factory=dict)
    """Correlation state to add: event id (event_count), value (value_count) or rule index
    (temporal) -> newest occurred_at in ms."""
    matches: int = 0
    ids: list[str] = field(default_factory=list)
    """Every matching event's id (an open alert's count is of distinct ids, so a resent batch
    does not count twice)."""
    event_ids: list[str] = field(default_factory=list)
    last: pb.Event | None = None
    first_received_us: int = 0

    def add(self, ev: pb.Event, member: str, ms: int) -> None:
        if self.members.get(member, -1) < ms:
            self.members[member] = ms
        self.matches += 1
        self.ids.append(ev.event_id)
        if len(self.event_ids) < SAMPLE:
            self.event_ids.append(ev.event_id)
        if self.last is None or ms >= occurred_ms(self.last):
            self.last = ev
        if not self.first_received_us or (ev.received_at_us and ev.received_at_us < self.first_received_us):
            self.first_received_us = ev.received_at_us

    @property
    def key(self) -> str:
        return self.rule.name + "|" + "|".join(f"{k}={v}" for k, v in self.group)


@dataclass
class Evaluation:
    hits: list[Hit] = field(default_factory=list)
    updates: dict[str, Update] = field(default_factory=dict)
    evaluated: int = 0


def evaluate(
    rules: RuleSet, events: Iterable[pb.Event], roles: RoleDirectory | None = None, into: Evaluation | None = None
) -> Evaluation:
    """Match every event against every detection rule and aggregate the batch's contributions
    (added to ``into`` when given, so a round evaluated in chunks aggregates as one batch)."""
    out = into if into is not None else Evaluation()
    for ev in events:
        out.evaluated += 1
        ms = 0
        for detection in rules.candidates(ev.event_type):
            if not detection.matches(ev, roles):
                continue
            ms = ms or occurred_ms(ev)
            if detection.generate:
                if detection.suppression_ms:
                    group = _group(ev, roles, detection.suppression_by, detection.suppression_by)
                    if group is not None:
                        _update(out, detection, group).add(ev, ev.event_id, ms)
                else:
                    out.hits.append(Hit(detection, ev))
            for correlation in rules.users_of(detection.name):
                group = _group(ev, roles, correlation.group_by, correlation.group_fields[detection.name])
                if group is None:
                    continue
                if correlation.kind == "event_count":
                    member = ev.event_id
                elif correlation.kind == "value_count":
                    value = fields.getter(correlation.value_field)(ev, roles)
                    if value is None:
                        continue
                    member = value
                else:
                    member = str(correlation.rules.index(detection.name))
                _update(out, correlation, group).add(ev, member, ms)
    return out


def _update(out: Evaluation, rule: Correlation | Detection, group: tuple[tuple[str, str], ...]) -> Update:
    probe = Update(rule, group)
    found = out.updates.get(probe.key)
    if found is None:
        out.updates[probe.key] = found = probe
    return found


def _group(
    ev: pb.Event, roles: RoleDirectory | None, names: tuple[str, ...], read: tuple[str, ...]
) -> tuple[tuple[str, str], ...] | None:
    """The group's (name, value) pairs; None when the event lacks one of the fields."""
    group: list[tuple[str, str]] = []
    for name, source in zip(names, read, strict=True):
        value = fields.getter(source)(ev, roles)
        if value is None:
            return None
        group.append((name, value))
    return tuple(group)
