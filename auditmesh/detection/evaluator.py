"""Evaluation of a rule set over one batch of events, with no I/O.

The result of a batch is what the batch contributes, aggregated: one :class:`Hit` per event that
matches a detection rule raising alerts one by one, and one :class:`Update` per (rule, group)
carrying everything the batch adds to that group's correlation or suppression state. The
updates of a batch go to Redis in one call (:mod:`auditmesh.detection.state`), so its cost
does not grow with the number of events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from auditmesh.detection.fields import Getter, RoleDirectory
from auditmesh.detection.index import EVENT_ID, VALUE, Candidate, merge
from auditmesh.detection.rules import Correlation, Detection, RuleSet
from auditmesh.store import occurred_ms
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Evaluation", "Hit", "SAMPLE", "Update", "evaluate"]

SAMPLE = 20
"""Triggering event ids kept per alert; the count says how many there were in all."""


@dataclass(slots=True)
class Hit:
    """One event matched a detection rule that raises an alert per event."""

    rule: Detection
    event: pb.Event


@dataclass(slots=True)
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
    last: pb.Event | None = None
    last_ms: int = -1
    first_received_us: int = 0

    def add(self, ev: pb.Event, member: str, ms: int) -> None:
        if self.members.get(member, -1) < ms:
            self.members[member] = ms
        self.matches += 1
        self.ids.append(ev.event_id)
        if ms >= self.last_ms:
            self.last = ev
            self.last_ms = ms
        received = ev.received_at_us
        if not self.first_received_us or (received and received < self.first_received_us):
            self.first_received_us = received

    @property
    def event_ids(self) -> list[str]:
        """The first ``SAMPLE`` matching events' ids, the alert's sample."""
        return self.ids[:SAMPLE]

    @property
    def key(self) -> str:
        return self.rule.name + "|" + "|".join(f"{k}={v}" for k, v in self.group)


@dataclass
class Evaluation:
    hits: list[Hit] = field(default_factory=list)
    updates: dict[tuple[str, tuple[tuple[str, str], ...]], Update] = field(default_factory=dict)
    """By (rule name, group)."""
    evaluated: int = 0


def evaluate(
    rules: RuleSet, events: Iterable[pb.Event], roles: RoleDirectory | None = None, into: Evaluation | None = None
) -> Evaluation:
    """Match every event against the rule set and aggregate the batch's contributions (added to
    ``into`` when given, so a round evaluated in chunks aggregates as one batch).

    The verdicts are those of each rule's predicate (:attr:`Detection.matches`) on every event;
    the index only skips the predicates that cannot hold (see :mod:`auditmesh.detection.index`).
    """
    out = into if into is not None else Evaluation()
    index = rules.index
    gates = index.gates if roles is not None else index.gates_without_roles
    ungated = index.ungated
    hits, updates = out.hits, out.updates
    n = 0
    for ev in events:
        n += 1
        found: Sequence[Candidate] = ungated
        for read, table in gates:
            key = read(ev, roles)
            if key is not None:
                more = table.get(key)
                if more is not None:
                    found = merge(found, more) if found else more
        if not found:
            continue
        ms = -1
        for compiled, check in found:
            if check is not None and not check(ev, roles):
                continue
            if ms < 0:
                ms = occurred_ms(ev)
            detection = compiled.detection
            if detection.generate:
                if detection.suppression_ms:
                    group = _group(ev, roles, detection.suppression_by, compiled.suppress_reads)
                    if group is not None:
                        _update(updates, detection, group).add(ev, ev.event_id, ms)
                else:
                    hits.append(Hit(detection, ev))
            for use in compiled.uses:
                correlation = use.correlation
                group = _group(ev, roles, correlation.group_by, use.reads)
                if group is None:
                    continue
                if use.member == EVENT_ID:
                    member = ev.event_id
                elif use.member == VALUE:
                    assert use.value is not None
                    value = use.value(ev, roles)
                    if value is None:
                        continue
                    member = value
                else:
                    member = use.position
                _update(updates, correlation, group).add(ev, member, ms)
    out.evaluated += n
    return out


def _update(
    updates: dict[tuple[str, tuple[tuple[str, str], ...]], Update],
    rule: Correlation | Detection,
    group: tuple[tuple[str, str], ...],
) -> Update:
    found = updates.get((rule.name, group))
    if found is None:
        updates[(rule.name, group)] = found = Update(rule, group)
    return found


def _group(
    ev: pb.Event, roles: RoleDirectory | None, names: tuple[str, ...], reads: tuple[Getter, ...]
) -> tuple[tuple[str, str], ...] | None:
    """The group's (name, value) pairs; None when the event lacks one of the fields."""
    group: list[tuple[str, str]] = []
    for name, read in zip(names, reads, strict=True):
        value = read(ev, roles)
        if value is None:
            return None
        group.append((name, value))
    return tuple(group)
