"""The compiled rule index changes what evaluation costs, never what it finds: over the rule pack
and a set of rules built to trip it, and over events made to hit and just miss them, every rule's
verdict through the index is its own predicate's, and a whole evaluation (alerts, correlation and
suppression updates) is the one the straightforward evaluation gives: every rule's predicate on
every event, fields read through the field mapping."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from auditmesh.detection import fields
from auditmesh.detection.evaluator import Evaluation, Hit, Update, evaluate
from auditmesh.detection.fields import RoleDirectory
from auditmesh.detection.rules import Correlation, Detection, RuleSet, load_rules, parse_rules
from auditmesh.store import occurred_ms
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb
from tests.detection.conftest import PACK, Roles, event

HEAD = "logsource:\n  product: auditmesh\nlevel: high\n"
TRICKY = "\n---\n".join(
    f"title: {name}\nname: {name}\n{HEAD}detection:\n{body}"
    for name, body in [
        ("typed", "  s:\n    event_type: GuestList.Export\n  condition: s\n"),
        ("either", "  s:\n    event_type: a.b\n  t:\n    outcome: denied\n  condition: s or t\n"),
        ("negated", "  s:\n    event_type: a.b\n  condition: not s\n"),
        ("untyped", "  s:\n    user_id: u-1\n  condition: s\n"),
        ("never", "  s:\n    event_type: a.b\n  t:\n    event_type: c.d\n  condition: s and t\n"),
        ("cased", "  s:\n    event_type|cased: Auth.Login.Failed\n  condition: s\n"),
        ("wild_p0", "  s:\n    event_type: 'auth.*'\n    severity: P0_CRITICAL\n  condition: s\n"),
        ("csv_quiet", "  s:\n    export_format: CSV\n    attributes.channel: ''\n  condition: s\n"),
        ("type_or_p0", "  s:\n    event_type: a.b\n  t:\n    severity: p0_critical\n  condition: s or t\n"),
        ("not_ok", "  s:\n    event_type: x.y\n  t:\n    outcome: success\n  condition: s and not t\n"),
        ("member_view", "  s:\n    event_type: guestlist.viewed\n    organization_role: member\n  condition: s\n"),
        ("contains", "  s:\n    event_type|contains: login\n    source_ip|cidr: 10.0.0.0/8\n  condition: s\n"),
        ("big", "  s:\n    resource_type: [guestlist, payment]\n    record_count|gte: 500\n  condition: s\n"),
        ("one_of", "  a:\n    event_type: c.d\n  b:\n    event_type: C.D\n    user_id: u-2\n  condition: 1 of them\n"),
    ]
)
CORRELATED = (
    "\n---\ntitle: c\nname: c_count\nlevel: low\ncorrelation:\n  type: value_count\n  rules: [either, typed]\n"
    "  group-by: [user_id]\n  timespan: 10m\n  condition:\n    field: outcome\n    gte: 2\n"
    "---\ntitle: s\nname: s_seq\nlevel: low\ncorrelation:\n  type: temporal\n  rules: [never, not_ok, big]\n"
    "  group-by: [wedding_id]\n  timespan: 10m\nsuppression: 5m\n"
)
ROLES = Roles({"wed-1": {"org-1"}, "wed-2": set()})


def rule_sets() -> list[RuleSet]:
    return [load_rules(PACK), parse_rules([("t.yml", TRICKY + CORRELATED)])]


def made_events() -> list[pb.Event]:
    """Every combination of values the rules above test, and their near misses."""
    t0 = int(time.time() * 1000)
    types = ["auth.login.failed", "AUTH.LOGIN.FAILED", "Auth.Login.Failed", "auth.login", "auth.login.succeeded"]
    types += ["guestlist.export", "contract.export", "guestlist.viewed", "permission.granted", "role.changed"]
    types += ["a.b", "A.B", "c.d", "x.y", ""]
    attributes: list[dict[str, str]] = [
        {},
        {"format": "csv", "channel": ""},
        {"format": "CSV"},
        {"record_count": "500", "target_user_id": "u-2"},
        {"record_count": "499"},
        {"record_count": "lots", "target_user_id": ""},
    ]
    combos = itertools.product(
        types,
        [pb.OUTCOME_SUCCESS, pb.OUTCOME_FAILURE, pb.OUTCOME_DENIED],
        [pb.P0_CRITICAL, pb.P1_HIGH, pb.P3_LOW],
        ["guestlist", "GuestList", "session", ""],
        attributes,
        [("u-1", "10.1.2.3"), ("u-2", "192.0.2.1"), ("", "")],
        [("wed-1", "org-1"), ("wed-1", "org-2"), ("wed-2", "org-1"), ("wed-9", "org-1"), ("", "org-1")],
    )
    out = []
    for i, (kind, outcome, severity, resource, attrs, (user, ip), (wedding, org)) in enumerate(combos):
        if i % 19:  # one in 19 of the 81,000 combinations (a prime stride: spread over all of them)
            continue
        out.append(
            event(
                kind,
                at_ms=t0 + i % 1000,
                outcome=outcome,
                severity=severity,
                resource_type=resource,
                attributes=attrs,
                user_id=user,
                source_ip=ip,
                wedding_id=wedding,
                organization_id=org,
            )
        )
    return out


def synthetic_events(n: int = 3000) -> list[pb.Event]:
    rng = random.Random(5)
    t0 = int(time.time() * 1000)
    out = []
    for i, kw in enumerate(Synthetic(weddings=50, seed=3).events(n)):
        attrs = {"record_count": str(rng.choice([3, 499, 500, 2000]))} if i % 3 == 0 else {}
        if kw["event_type"] == "permission.granted" and i % 2:
            attrs["target_user_id"] = kw["user_id"]
        out.append(event(attributes=attrs, at_ms=t0 + rng.randrange(600_000), **kw))
    return out


def through_index(rules: RuleSet, ev: pb.Event, roles: RoleDirectory | None) -> set[str]:
    return {c.detection.name for c, check in rules.index.candidates(ev, roles) if check is None or check(ev, roles)}


@pytest.mark.parametrize("with_roles", [False, True])
def test_every_verdict_through_the_index_is_the_predicates(with_roles: bool) -> None:
    """For every rule and event, the index selects the rule exactly when the rule's whole predicate holds."""
    roles = ROLES if with_roles else None
    events = made_events() + synthetic_events()
    for rules in rule_sets():
        for ev in events:
            expected = {d.name for d in rules.detections if d.matches(ev, roles)}
            assert through_index(rules, ev, roles) == expected, ev


def test_gates_reject_most_events_without_a_predicate() -> None:
    """The index is not a pass-through: every detection rule of the pack has a gate, and rules whose
    gate is their whole condition have nothing left to check."""
    rules = load_rules(PACK)
    assert rules.index.ungated == ()
    gates = {d.name: d.gate for d in rules.detections}
    assert gates["auth_login_failed"] == "event_type" and gates["p0_event"] == "severity"
    assert gates["bulk_access"] == "resource_type" and gates["foreign_org_access"] == "organization_role"
    p0 = next(d for d in rules.detections if d.name == "p0_event")
    assert dict(p0.residuals) == {"p0_critical": None}
    never = next(d for d in rule_sets()[1].detections if d.name == "never")
    assert dict(never.residuals) == {}


def reference(rules: RuleSet, events: list[pb.Event], roles: RoleDirectory | None) -> Evaluation:
    """The evaluation without the index: every rule's predicate on every event, in rule order."""
    out = Evaluation()
    updates: dict[str, Update] = {}

    def update(rule: Correlation | Detection, group: tuple[tuple[str, str], ...]) -> Update:
        u = Update(rule, group)
        return updates.setdefault(u.key, u)

    def group_of(ev: pb.Event, names: tuple[str, ...], read: tuple[str, ...]) -> tuple[tuple[str, str], ...] | None:
        values = [fields.getter(f)(ev, roles) for f in read]
        return None if any(v is None for v in values) else tuple(zip(names, values, strict=True))  # type: ignore[arg-type]

    for ev in events:
        out.evaluated += 1
        for d in rules.detections:
            if not d.matches(ev, roles):
                continue
            ms = occurred_ms(ev)
            if d.generate and d.suppression_ms:
                group = group_of(ev, d.suppression_by, d.suppression_by)
                if group is not None:
                    update(d, group).add(ev, ev.event_id, ms)
            elif d.generate:
                out.hits.append(Hit(d, ev))
            for c in rules.correlations:
                if d.name not in c.rules:
                    continue
                group = group_of(ev, c.group_by, c.group_fields[d.name])
                if group is None:
                    continue
                if c.kind == "event_count":
                    member: str | None = ev.event_id
                elif c.kind == "value_count":
                    member = fields.getter(c.value_field)(ev, roles)
                else:
                    member = str(c.rules.index(d.name))
                if member is not None:
                    update(c, group).add(ev, member, ms)
    out.updates = {(u.rule.name, u.group): u for u in updates.values()}
    return out


def summary(result: Evaluation) -> tuple[object, ...]:
    hits = [(h.rule.name, h.event.event_id) for h in result.hits]
    updates = {
        key: (u.key, u.members, u.matches, u.ids, u.event_ids, u.last.event_id if u.last else "", u.first_received_us)
        for key, u in result.updates.items()
    }
    return result.evaluated, hits, updates


@pytest.mark.parametrize("with_roles", [False, True])
def test_an_evaluation_through_the_index_is_the_straightforward_one(with_roles: bool) -> None:
    """Alerts, and every correlation and suppression update with its members, ids and sample, are the
    same as evaluating every rule's predicate on every event, in one batch and in chunks."""
    roles = ROLES if with_roles else None
    events = made_events() + synthetic_events()
    for rules in rule_sets():
        expected = summary(reference(rules, events, roles))
        assert summary(evaluate(rules, events, roles)) == expected
        chunked = Evaluation()
        for i in range(0, len(events), 500):
            evaluate(rules, events[i : i + 500], roles, into=chunked)
        assert summary(chunked) == expected
