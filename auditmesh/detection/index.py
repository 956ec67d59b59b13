"""A rule set compiled for evaluation: which detection rules an event can match, found with one
dict lookup per gate field, and what each rule's match feeds.

Most events match no rule. Each detection rule's condition implies a *gate* when it can (see
``rules._gate``): a field and the case-folded values one of which it must hold, e.g.
``event_type in {auth.login.failed, auth.login}`` or ``severity == p0_critical``. Rules are
grouped by their gate field into ``{folded value: rules}`` tables, so an event costs one read and
one lookup per gate field the pack uses (four for the platform's pack), however many rules there
are, and runs the full predicate only of the few rules its values select; a rule whose gate is
its whole condition does not even do that. Rules whose condition implies no gate are tried on
every event.

Everything an evaluation reads per match is resolved here once: the readers of each
correlation's group-by fields (aliases applied), of its value field, and of a suppressed rule's
``suppression-by`` fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auditmesh.detection import fields
from auditmesh.detection.fields import Getter, RoleDirectory
from auditpb.v1 import audit_pb2 as pb

if TYPE_CHECKING:
    from auditmesh.detection.rules import Correlation, Detection

__all__ = ["Candidate", "Compiled", "RuleIndex", "Use", "merge"]

EVENT_ID, VALUE, RULE = 0, 1, 2
"""What a correlation's window holds for a match: the event's id (event_count), the value of its
value field (value_count), or the matching rule's position in the correlation (temporal)."""


@dataclass(frozen=True)
class Use:
    """One correlation that a detection rule's matches feed."""

    correlation: Correlation
    reads: tuple[Getter, ...]
    """Readers of the group-by fields for this rule, in ``group_by`` order."""
    member: int
    value: Getter | None = None
    position: str = ""


@dataclass(frozen=True)
class Compiled:
    order: int
    """The rule's position in the set: matches of one event are handled in this order."""
    detection: Detection
    suppress_reads: tuple[Getter, ...]
    uses: tuple[Use, ...]


Check = Callable[[pb.Event, RoleDirectory | None], bool]
Candidate = tuple[Compiled, Check | None]


class RuleIndex:
    """The compiled form of a rule set's detection rules and the correlations over them."""

    def __init__(self, detections: Sequence[Detection], correlations: Sequence[Correlation]) -> None:
        compiled: list[Compiled] = []
        for order, d in enumerate(detections):
            uses: list[Use] = []
            for c in correlations:
                if d.name not in c.rules:
                    continue
                reads = tuple(fields.getter(f) for f in c.group_fields[d.name])
                if c.kind == "event_count":
                    uses.append(Use(c, reads, EVENT_ID))
                elif c.kind == "value_count":
                    uses.append(Use(c, reads, VALUE, value=fields.getter(c.value_field)))
                else:
                    uses.append(Use(c, reads, RULE, position=str(c.rules.index(d.name))))
            compiled.append(
                Compiled(
                    order=order,
                    detection=d,
                    suppress_reads=tuple(fields.getter(f) for f in d.suppression_by),
                    uses=tuple(uses),
                )
            )
        tables: dict[str, dict[str, list[Candidate]]] = {}
        ungated: list[Candidate] = []
        for entry in compiled:
            d = entry.detection
            if not d.gate:
                ungated.append((entry, d.matches))
                continue
            table = tables.setdefault(d.gate, {})
            for value, residual in d.residuals.items():
                table.setdefault(value, []).append((entry, residual))
        names = sorted(tables, key=_gate_order)
        self.gates: tuple[tuple[Getter, dict[str, tuple[Candidate, ...]]], ...] = tuple(
            (fields.folded_getter(name), {value: tuple(cs) for value, cs in tables[name].items()}) for name in names
        )
        """Per gate field: its folded reader and folded value -> the rules gated on that value, each
        with what is left to check of its condition (None: nothing)."""
        self.gates_without_roles = tuple(
            (read, table) for (read, table), name in zip(self.gates, names, strict=True) if name != "organization_role"
        )
        """The gates that can select anything when there is no role relation (the derived
        organization role reads as unset without one)."""
        self.ungated: tuple[Candidate, ...] = tuple(ungated)
        """Rules tried on every event, with their whole predicate."""
        self.compiled: tuple[Compiled, ...] = tuple(compiled)

    def candidates(self, ev: pb.Event, roles: RoleDirectory | None) -> Sequence[Candidate]:
        """The rules whose predicate may hold for ``ev``, in rule order, with what is left to check
        (the evaluator inlines this)."""
        found: Sequence[Candidate] = self.ungated
        for read, table in self.gates if roles is not None else self.gates_without_roles:
            key = read(ev, roles)
            if key is not None:
                more = table.get(key)
                if more is not None:
                    found = merge(found, more) if found else more
        return found


def merge(a: Sequence[Candidate], b: Sequence[Candidate]) -> list[Candidate]:
    """Two candidate lists as one, in rule order (rare: an event selected through two gates)."""
    return sorted([*a, *b], key=_order)


def _order(c: Candidate) -> int:
    return c[0].order


def _gate_order(name: str) -> tuple[bool, str]:
    # The derived organization role asks the role relation: read it last.
    return name == "organization_role", name
