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
from collections.abc import Callable, Sequence
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
    event_types: frozenset[str] | None = None
    """The (case-folded) event types the condition requires, when it requires one; None: any."""


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
    _by_type: dict[str, tuple[Detection, ...]] = field(default_factory=dict, compare=False, repr=False)
    _any_type: tuple[Detection, ...] = field(default=(), compare=False, repr=False)
    _users: dict[str, tuple[Correlation, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Most rules name event types: an event is matched only against the rules that can
        # match its type (and those that name none), which keeps the pack's cost per event low.
        by_type: dict[str, list[Detection]] = {}
        any_type: list[Detection] = []
        for d in self.detections:
            if d.event_types is None:
                any_type.append(d)
            for t in d.event_types or ():
                by_type.setdefault(t, []).append(d)
        order = {d.name: i for i, d in enumerate(self.detections)}
        merged = {t: tuple(sorted([*ds, *any_type], key=lambda d: order[d.name])) for t, ds in by_type.items()}
        object.__setattr__(self, "_by_type", merged)
        object.__setattr__(self, "_any_type", tuple(any_type))
        users = {d.name: tuple(c for c in self.correlations if d.name in c.rules) for d in self.detections}
        object.__setattr__(self, "_users", users)

    def candidates(self, event_type: str) -> tuple[Detection, ...]:
        """The detection rules that can match an event of this type."""
        return self._by_type.get(event_type.casefold(), self._any_type)

    def users_of(self, detection: str) -> tuple[Correlation, ...]:
        return self._users.get(detection, ())


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
    suppression_ms, suppression_by = _suppression(rule, name)
    return Detection(
        name=name,
        title=rule.title,
        severity=_severity(rule, name),
        path=path,
        description=rule.description or rule.title,
        matches=matcher,
        event_types=_implied_types(tree),
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


def _implied_types(node: Any) -> frozenset[str] | None:
    """Event types an event must have for the condition to hold; None when it does not say."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        value = node.value
        if node.field == "event_type" and isinstance(value, SigmaString) and not isinstance(value, SigmaCasedString):
            if not value.contains_special():
                return frozenset([str(value.to_plain()).casefold()])
        return None
    if isinstance(node, ConditionAND):
        implied = [t for t in (_implied_types(arg) for arg in node.args) if t is not None]
        return frozenset.intersection(*implied) if implied else None
    if isinstance(node, ConditionOR):
        branches = [_implied_types(arg) for arg in node.args]
        if any(b is None for b in branches):
            return None
        return frozenset().union(*(b for b in branches if b is not None))
    return None


def _compile(node: Any, path: str, rule: str) -> Matcher:
    if isinstance(node, ConditionAND):
        parts = [_compile(arg, path, rule) for arg in node.args]
        return lambda ev, roles: all(p(ev, roles) for p in parts)
    if isinstance(node, ConditionOR):
        parts = [_compile(arg, path, rule) for arg in node.args]
        return lambda ev, roles: any(p(ev, roles) for p in parts)
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
