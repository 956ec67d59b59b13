"""Sigma rules and correlation rules, parsed by pySigma and compiled into matchers over ``pb.Event``.

pySigma parses and validates the YAML (detections, modifiers, conditions, correlation rules and
their references); this module walks the condition tree pySigma builds and turns it into a
Python predicate, because pySigma converts rules to query languages and does not evaluate them.

Conventions of the files (``rules/*.yml``):

- ``logsource: {product: auditmesh}`` on every detection rule.
- Field names from :mod:`auditmesh.detection.fields`; any other name is a :class:`RuleError`.
- ``suppression: 10m`` (a custom attribute, Sigma timespan syntax): after a rule raises an alert
  for a group (a correlation's ``group-by`` values, or a detection rule's ``suppression-by``
  fields), further hits for that group within the window add to that alert's count instead of
  raising another. Without it a detection rule raises one alert per matching event.
- A detection rule referenced by a correlation raises no alert of its own (Sigma's
  ``generate: false``) unless the correlation says ``generate: true``.
- Supported correlation types: ``event_count``, ``value_count``, ``temporal``,
  ``temporal_ordered`` over detection rules, grouped by fields within a timespan. Anything else
  (aliases, value sums, correlations of correlations, extended conditions) is refused with an
  error naming the file and the rule.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationTimespan,
    SigmaCorrelationType,
)
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
)

from auditmesh.detection import fields
from auditmesh.detection.fields import RoleDirectory
from auditmesh.detection.index import RuleIndex
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Correlation", "Detection", "RuleError", "RuleSet", "load_rules", "parse_rules"]

PRODUCT = "auditmesh"

Matcher = Callable[[pb.Event, RoleDirectory | None], bool]

_LEVELS = {
    "critical": pb.P0_CRITICAL,
    "high": pb.P1_HIGH,
    "medium": pb.P2_MEDIUM,
    "low": pb.P3_LOW,
    "informational": pb.P3_LOW,
}
_OPS: dict[SigmaCorrelationConditionOperator, str] = {
    SigmaCorrelationConditionOperator.LT: "lt",
    SigmaCorrelationConditionOperator.LTE: "lte",
    SigmaCorrelationConditionOperator.GT: "gt",
    SigmaCorrelationConditionOperator.GTE: "gte",
    SigmaCorrelationConditionOperator.EQ: "eq",
    SigmaCorrelationConditionOperator.NEQ: "neq",
}
_KINDS = {
    SigmaCorrelationType.EVENT_COUNT: "event_count",
    SigmaCorrelationType.VALUE_COUNT: "value_count",
    SigmaCorrelationType.TEMPORAL: "temporal",
    SigmaCorrelationType.TEMPORAL_ORDERED: "temporal_ordered",
}


class RuleError(ValueError):
    """A rule file that cannot be used: names the file, the rule and the field when known."""

    def __init__(self, message: str, *, path: str = "", rule: str = "", field: str = "") -> None:
        self.path = path
        self.rule = rule
        self.field = field
        self.message = message
        where = [part for part in (path, f"rule {rule!r}" if rule else "", f"field {field!r}" if field else "") if part]
        super().__init__(": ".join([*where, message]))


@dataclass(frozen=True)
class Detection:
    """A detection rule: a predicate over one event."""

    name: str
    title: str
    severity: int
    path: str
    description: str
    matches: Matcher = field(repr=False, compare=False)
    generate: bool = True
    """Raises alerts of its own (False when only a correlation uses it)."""
    suppression_ms: int = 0
    suppression_by: tuple[str, ...] = ()
    gate: str = ""
    """A field whose case-folded value must be one of :attr:`residuals`' keys for the condition to
    hold (the condition implies it); empty when the condition implies no such field. The index
    rejects most events with it without running :attr:`matches`."""
    residuals: Mapping[str, Matcher | None] = field(default_factory=dict, repr=False, compare=False)
    """Per value of the gate field, what is left of the condition once the field is known to hold
    it: None when nothing is (the value alone matches)."""


@dataclass(frozen=True)
class Correlation:
    """A Sigma correlation rule over detection rules, evaluated with state in Redis."""

    name: str
    title: str
    severity: int
    path: str
    description: str
    kind: str
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    group_fields: dict[str, tuple[str, ...]] = field(compare=False, hash=False)
    """Per referenced rule, the event fields its ``group-by`` reads (Sigma field aliases resolved)."""
    timespan_ms: int
    op: str
    threshold: float
    value_field: str = ""
    suppression_ms: int = 0


@dataclass(frozen=True)
class RuleSet:
    detections: tuple[Detection, ...] = ()
    correlations: tuple[Correlation, ...] = ()
    digest: str = ""
    """Hash of the files the set was loaded from (a reload that changes nothing keeps the set)."""
    index: RuleIndex = field(init=False, compare=False, repr=False)
    """The rules compiled for evaluation (see :mod:`auditmesh.detection.index`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", RuleIndex(self.detections, self.correlations))


def load_rules(directory: str | Path) -> RuleSet:
    """Every ``*.yml`` / ``*.yaml`` file under ``directory``; RuleError for the first bad one."""
    root = Path(directory)
    if not root.is_dir():
        raise RuleError("rules directory does not exist", path=str(root))
    paths = sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    return parse_rules([(str(p), p.read_text(encoding="utf-8")) for p in paths])


def parse_rules(files: Sequence[tuple[str, str]]) -> RuleSet:
    """Parse ``(path, yaml text)`` pairs with pySigma and compile them; RuleError on any problem."""
    collections: list[SigmaCollection] = []
    digest = hashlib.sha256()
    for path, text in files:
        digest.update(path.encode() + b"\0" + text.encode())
        try:
            collection = SigmaCollection.from_yaml(
                text, collect_errors=True, resolve_references=False, source=SigmaRuleLocation(Path(path))
            )
        except SigmaError as exc:
            raise RuleError(_sigma_message(exc), path=path) from exc
        except Exception as exc:  # YAML that does not parse at all
            raise RuleError(f"not a Sigma file: {exc}", path=path) from exc
        if collection.errors:
            raise RuleError(_sigma_message(collection.errors[0]), path=path)
        for rule in collection.rules:
            rule.source = rule.source or SigmaRuleLocation(Path(path))
        collections.append(collection)
    merged = SigmaCollection.merge(collections, resolve_references=False)
    for rule in merged.rules:
        if isinstance(rule, SigmaCorrelationRule):
            try:
                rule.resolve_rule_references(merged)
            except SigmaError as exc:
                raise RuleError(_sigma_message(exc), path=_rule_path(rule), rule=rule.name or rule.title) from exc
    names: set[str] = set()
    correlated: dict[str, bool] = {}  # detection rule -> some correlation generates its alerts too
    correlations: list[Correlation] = []
    for rule in merged.rules:
        name = _name_of(rule)
        if name in names:
            raise RuleError("two rules share this name", path=_rule_path(rule), rule=name)
        names.add(name)
        if isinstance(rule, SigmaCorrelationRule):
            correlation = _correlation(rule, name)
            correlations.append(correlation)
            for ref in correlation.rules:
                correlated[ref] = correlated.get(ref, False) or rule.generate
    detections = [
        _detection(rule, _name_of(rule), generate=correlated.get(_name_of(rule), True))
        for rule in merged.rules
        if isinstance(rule, SigmaRule)
    ]
    return RuleSet(tuple(detections), tuple(correlations), digest.hexdigest())


def _name_of(rule: SigmaRule | SigmaCorrelationRule) -> str:
    if rule.name:
        return rule.name
    if rule.id is not None:
        return str(rule.id)
    raise RuleError("a rule needs a name or an id", path=_rule_path(rule), rule=rule.title or "")


def _rule_path(rule: SigmaRule | SigmaCorrelationRule) -> str:
    return str(rule.source.path) if rule.source is not None else ""


def _sigma_message(exc: SigmaError) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _severity(rule: SigmaRule | SigmaCorrelationRule, name: str) -> int:
    if rule.level is None:
        raise RuleError("needs a level (informational, low, medium, high, critical)", path=_rule_path(rule), rule=name)
    return _LEVELS[rule.level.name.lower()]


def _suppression(rule: SigmaRule | SigmaCorrelationRule, name: str) -> tuple[int, tuple[str, ...]]:
    raw = rule.custom_attributes.get("suppression")
    by = rule.custom_attributes.get("suppression-by", [])
    if isinstance(by, str):
        by = [by]
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        raise RuleError("suppression-by must be a list of field names", path=_rule_path(rule), rule=name)
    for f in by:
        if not fields.is_known(f):
            raise RuleError("no such event field in the field mapping", path=_rule_path(rule), rule=name, field=f)
    if raw is None:
        return 0, tuple(by)
    try:
        return SigmaCorrelationTimespan(str(raw)).seconds * 1000, tuple(by)
    except SigmaError as exc:
        raise RuleError(f"suppression: {_sigma_message(exc)}", path=_rule_path(rule), rule=name) from exc


def _detection(rule: SigmaRule, name: str, *, generate: bool) -> Detection:
    path = _rule_path(rule)
    if (rule.logsource.product or "") != PRODUCT:
        raise RuleError(f"logsource product must be {PRODUCT!r}", path=path, rule=name)
    conditions = rule.detection.parsed_condition
    if len(conditions) != 1:
        raise RuleError("exactly one condition is supported", path=path, rule=name)
    try:
        tree = conditions[0].parsed
    except SigmaError as exc:
        raise RuleError(_sigma_message(exc), path=path, rule=name) from exc
    matcher = _compile(tree, path, name)
    gate = _gate(tree)
    suppression_ms, suppression_by = _suppression(rule, name)
    return Detection(
        name=name,
        title=rule.title,
        severity=_severity(rule, name),
        path=path,
        description=rule.description or rule.title,
        matches=matcher,
        gate=gate[0] if gate is not None else "",
        residuals=_residuals(tree, gate, path, name),
        generate=generate,
        suppression_ms=suppression_ms,
        suppression_by=suppression_by,
    )


def _correlation(rule: SigmaCorrelationRule, name: str) -> Correlation:
    path = _rule_path(rule)
    kind = _KINDS.get(rule.type)
    if kind is None:
        raise RuleError(f"correlation type {rule.type.name.lower()} is not supported", path=path, rule=name)
    refs: list[str] = []
    by_reference: dict[str, str] = {}
    for ref in rule.rules or []:
        target = ref.rule
        if isinstance(target, SigmaCorrelationRule):
            raise RuleError(f"refers to correlation {ref.reference!r}: only detection rules", path=path, rule=name)
        refs.append(_name_of(target))
        by_reference[ref.reference] = refs[-1]
    group_by = tuple(rule.group_by or ())
    aliases: dict[str, dict[str, str]] = {}
    for alias in rule.aliases:
        for ref, f in alias.mapping.items():
            if ref.reference not in by_reference:
                raise RuleError(f"alias {alias.alias!r} names a rule not in the correlation", path=path, rule=name)
            aliases.setdefault(alias.alias, {})[by_reference[ref.reference]] = f
    group_fields: dict[str, tuple[str, ...]] = {}
    for ref_name in refs:
        resolved = tuple(aliases[g].get(ref_name, g) if g in aliases else g for g in group_by)
        for f in resolved:
            if not fields.is_known(f):
                raise RuleError("no such event field in the field mapping", path=path, rule=name, field=f)
        group_fields[ref_name] = resolved
    condition = rule.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise RuleError("extended correlation conditions are not supported", path=path, rule=name)
    value_field = ""
    if kind == "value_count":
        ref_field = condition.fieldref
        if not isinstance(ref_field, str):
            raise RuleError("value_count needs one field", path=path, rule=name)
        if not fields.is_known(ref_field):
            raise RuleError("no such event field in the field mapping", path=path, rule=name, field=ref_field)
        value_field = ref_field
    suppression_ms, _ = _suppression(rule, name)
    return Correlation(
        name=name,
        title=rule.title,
        severity=_severity(rule, name),
        path=path,
        description=rule.description or rule.title,
        kind=kind,
        rules=tuple(refs),
        group_by=group_by,
        group_fields=group_fields,
        timespan_ms=rule.timespan.seconds * 1000,
        op=_OPS[condition.op],
        threshold=float(condition.count),
        value_field=value_field,
        suppression_ms=suppression_ms,
    )


_GATE_COST = {"event_type": 0, "organization_role": 3}
"""Which field a gate prefers when a condition implies several: the event type first (the most
selective and cheapest), the derived organization role last (it asks the role relation); the
others in between, attributes after event fields."""


def _gate_cost(name: str) -> int:
    return _GATE_COST.get(name, 2 if name.startswith(fields.ATTRIBUTE_PREFIX) else 1)


def _gate(node: Any) -> tuple[str, frozenset[str]] | None:
    """(field, case-folded values) such that the condition implies that the field's folded value is
    one of the values; None when it implies no such test. Only plain case-insensitive strings make
    gates: they are compared by case-folded equality, exactly what the predicate does."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        value = node.value
        if isinstance(value, SigmaString) and not isinstance(value, SigmaCasedString) and not value.contains_special():
            folded = str(value.to_plain()).casefold()
            if folded:  # an empty field reads as None and never equals "", an empty attribute does
                return node.field, frozenset([folded])
        return None
    if isinstance(node, ConditionAND):
        implied = [g for g in (_gate(arg) for arg in node.args) if g is not None]
        return min(implied, key=lambda g: (_gate_cost(g[0]), len(g[1]))) if implied else None
    if isinstance(node, ConditionOR):
        branches = [_gate(arg) for arg in node.args]
        names = {b[0] for b in branches if b is not None}
        if not branches or any(b is None for b in branches) or len(names) != 1:
            return None
        return names.pop(), frozenset().union(*(b[1] for b in branches if b is not None))
    return None


def _residuals(tree: Any, gate: tuple[str, frozenset[str]] | None, path: str, rule: str) -> dict[str, Matcher | None]:
    if gate is None:
        return {}
    out: dict[str, Matcher | None] = {}
    for value in sorted(gate[1]):
        left = _residual(tree, gate[0], value, path, rule)
        if left is not False:  # False: the condition cannot hold with this value after all
            out[value] = None if left is True else left
    return out


def _residual(node: Any, name: str, folded: str, path: str, rule: str) -> bool | Matcher:
    """The condition for events whose field ``name`` folds to ``folded``: a constant where that
    decides it, else a predicate without the tests it decides."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        gate = _gate(node) if node.field == name else None
        return folded in gate[1] if gate is not None else _compile(node, path, rule)
    if isinstance(node, ConditionAND | ConditionOR):
        decisive = isinstance(node, ConditionOR)  # the constant that decides the whole node
        parts: list[Matcher] = []
        for arg in node.args:
            left = _residual(arg, name, folded, path, rule)
            if left is decisive:
                return decisive
            if left is not (not decisive):
                parts.append(left)  # type: ignore[arg-type]
        if not parts:
            return not decisive
        return _any(parts) if decisive else _all(parts)
    if isinstance(node, ConditionNOT):
        left = _residual(node.args[0], name, folded, path, rule)
        if isinstance(left, bool):
            return not left
        inner = left
        return lambda ev, roles: not inner(ev, roles)
    return _compile(node, path, rule)


def _all(parts: list[Matcher]) -> Matcher:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda ev, roles: a(ev, roles) and b(ev, roles)
    return lambda ev, roles: all(p(ev, roles) for p in parts)


def _any(parts: list[Matcher]) -> Matcher:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda ev, roles: a(ev, roles) or b(ev, roles)
    return lambda ev, roles: any(p(ev, roles) for p in parts)


def _compile(node: Any, path: str, rule: str) -> Matcher:
    if isinstance(node, ConditionAND):
        return _all([_compile(arg, path, rule) for arg in node.args])
    if isinstance(node, ConditionOR):
        return _any([_compile(arg, path, rule) for arg in node.args])
    if isinstance(node, ConditionNOT):
        inner = _compile(node.args[0], path, rule)
        return lambda ev, roles: not inner(ev, roles)
    if isinstance(node, ConditionFieldEqualsValueExpression):
        if not fields.is_known(node.field):
            raise RuleError("no such event field in the field mapping", path=path, rule=rule, field=node.field)
        get = fields.getter(node.field)
        test = _value_test(node.value, path, rule, node.field)
        return lambda ev, roles: test(get(ev, roles))
    if isinstance(node, ConditionValueExpression):
        raise RuleError("keyword detections (values without a field) are not supported", path=path, rule=rule)
    raise RuleError(f"unsupported condition element {type(node).__name__}", path=path, rule=rule)


def _value_test(value: Any, path: str, rule: str, name: str) -> Callable[[str | None], bool]:
    if isinstance(value, SigmaExpansion):
        tests = [_value_test(v, path, rule, name) for v in value.values]
        return lambda got: any(t(got) for t in tests)
    if isinstance(value, SigmaString):  # also SigmaCasedString
        cased = isinstance(value, SigmaCasedString)
        if value.contains_special():
            flags = re.DOTALL if cased else re.DOTALL | re.IGNORECASE
            pattern = re.compile(str(value.to_regex().regexp), flags)
            return lambda got: got is not None and pattern.fullmatch(got) is not None
        plain = str(value.to_plain())
        if cased:
            return lambda got: got == plain
        folded = plain.casefold()
        return lambda got: got is not None and got.casefold() == folded
    if isinstance(value, SigmaBool):
        text = "true" if value.boolean else "false"
        return lambda got: got is not None and got.lower() == text
    if isinstance(value, SigmaNumber):
        number = float(value.number)
        return lambda got: _number(got) == number
    if isinstance(value, SigmaNull):
        return lambda got: got is None
    if isinstance(value, SigmaExists):
        exists = value.exists
        return lambda got: (got is not None) == exists
    if isinstance(value, SigmaRegularExpression):
        flags = re.RegexFlag(0)
        for flag in value.flags:
            flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
        regex = re.compile(str(value.regexp), flags)
        return lambda got: got is not None and regex.search(got) is not None
    if isinstance(value, SigmaCompareExpression):
        bound = float(value.number.number)
        compare = _COMPARE[value.op]
        return lambda got: (n := _number(got)) is not None and compare(n, bound)
    if isinstance(value, SigmaCIDRExpression):
        network = value.network
        return lambda got: _in_network(got, network)
    raise RuleError(f"unsupported value or modifier ({type(value).__name__})", path=path, rule=rule, field=name)


_COMPARE: dict[CompareOperators, Callable[[float, float], bool]] = {
    CompareOperators.LT: lambda a, b: a < b,
    CompareOperators.LTE: lambda a, b: a <= b,
    CompareOperators.GT: lambda a, b: a > b,
    CompareOperators.GTE: lambda a, b: a >= b,
    CompareOperators.NEQ: lambda a, b: a != b,
}


def _number(got: str | None) -> float | None:
    if got is None:
        return None
    try:
        return float(got)
    except ValueError:
        return None


def _in_network(got: str | None, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not got:
        return False
    try:
        return ipaddress.ip_address(got) in network
    except ValueError:
        return False
