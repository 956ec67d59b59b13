"""Rule files: what pySigma parses is compiled faithfully (modifiers, conditions), and every kind
of bad file is refused with an error naming the file, the rule and the field."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from auditmesh.detection.config import DetectionConfig
from auditmesh.detection.detector import Detector
from auditmesh.detection.evaluator import evaluate
from auditmesh.detection.rules import RuleError, parse_rules
from auditpb.v1 import audit_pb2 as pb
from tests.detection.conftest import PACK, event, run

HEAD = "logsource:\n  product: auditmesh\nlevel: high\n"


def rule(name: str, detection: str, extra: str = "") -> str:
    return f"title: {name}\nname: {name}\n{HEAD}{extra}detection:\n{detection}"


def matches(detection: str, ev: pb.Event) -> bool:
    (compiled,) = parse_rules([("r.yml", rule("r", detection))]).detections
    return compiled.matches(ev, None)


def test_modifiers_and_conditions() -> None:
    """Wildcards, contains, startswith, numeric comparisons, CIDR, regex, exists, lists and not behave as Sigma says."""
    ev = event(
        "guestlist.export",
        user_id="vendor-17",
        source_ip="10.2.3.4",
        outcome=pb.OUTCOME_FAILURE,
        attributes={"record_count": "1200", "format": "csv"},
    )
    assert matches("  s:\n    event_type: GUESTLIST.*\n  condition: s\n", ev)  # case-insensitive wildcard
    assert not matches("  s:\n    event_type: guestlist\n  condition: s\n", ev)
    assert matches("  s:\n    user_id|startswith: vendor-\n    user_id|endswith: '17'\n  condition: s\n", ev)
    assert matches("  s:\n    record_count|gte: 1000\n  condition: s\n", ev)
    assert not matches("  s:\n    record_count|gt: 1200\n  condition: s\n", ev)
    assert matches("  s:\n    source_ip|cidr: 10.0.0.0/8\n  condition: s\n", ev)
    assert not matches("  s:\n    source_ip|cidr: 192.168.0.0/16\n  condition: s\n", ev)
    assert matches("  s:\n    attributes.format|re: '^c.v$'\n  condition: s\n", ev)
    assert matches("  s:\n    outcome:\n      - success\n      - failure\n  condition: s\n", ev)
    assert not matches("  s:\n    wedding_id|exists: true\n  condition: s\n", ev)
    assert matches("  s:\n    event_type|contains: export\n  f:\n    user_id: admin\n  condition: s and not f\n", ev)
    assert not matches("  s:\n    event_type|contains|all:\n      - export\n      - payment\n  condition: s\n", ev)


@pytest.mark.parametrize(
    ("text", "rule_name", "field", "message"),
    [
        (rule("r1", "  s:\n    usr_name: x\n  condition: s\n"), "r1", "usr_name", "no such event field"),
        (rule("r2", "  s:\n    event_type: x\n  condition: s and t\n"), "r2", "", "not defined"),
        (
            "title: r3\nname: r3\nlogsource:\n  product: windows\nlevel: low\ndetection:\n  s:\n    event_type: x\n"
            "  condition: s\n",
            "r3",
            "",
            "logsource product",
        ),
        (
            "title: c\nname: c\nlevel: high\ncorrelation:\n  type: event_count\n  rules: [missing]\n"
            "  group-by: [user_id]\n  timespan: 5m\n  condition:\n    gte: 3\n",
            "c",
            "",
            "missing",
        ),
        (
            rule("r5", "  s:\n    event_type: x\n  condition: s\n") + "---\ntitle: c5\nname: c5\nlevel: high\n"
            "correlation:\n  type: event_count\n  rules: [r5]\n  group-by: [account]\n  timespan: 5m\n"
            "  condition:\n    gte: 3\n",
            "c5",
            "account",
            "no such event field",
        ),
        (rule("r6", "  s:\n    event_type: x\n  condition: s\n", "suppression: soon\n"), "r6", "", "suppression"),
        (rule("r7", "  s:\n    event_type: [x\n  condition: s\n"), "", "", ""),
    ],
    ids=[
        "unknown-field",
        "undefined-selection",
        "wrong-product",
        "unknown-reference",
        "unknown-group-by",
        "bad-suppression",
        "bad-yaml",
    ],
)
def test_bad_rules_are_refused_naming_file_rule_and_field(text: str, rule_name: str, field: str, message: str) -> None:
    """Each bad file raises RuleError carrying its path, and the rule and field where they are known."""
    with pytest.raises(RuleError) as caught:
        parse_rules([("rules/bad.yml", text)])
    err = caught.value
    assert "rules/bad.yml" in str(err)
    assert err.rule == rule_name and err.field == field
    assert message in str(err)


def test_rules_reload_without_restart_and_a_bad_edit_keeps_the_old_rules(tmp_path: Path) -> None:
    """A changed file is picked up by the next check; a broken edit is counted and the previous rules stay."""
    path = tmp_path / "r.yml"
    path.write_text(rule("first", "  s:\n    event_type: a\n  condition: s\n"))
    detector = Detector(DetectionConfig(rules_dir=str(tmp_path)), None, None, "ks")
    assert detector.load() and [d.name for d in detector.rules.detections] == ["first"]
    path.write_text(rule("second", "  s:\n    event_type: b\n  condition: s\n"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert detector.load() and [d.name for d in detector.rules.detections] == ["second"]
    path.write_text(rule("third", "  s:\n    nope: b\n  condition: s\n"))
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert not detector.load()
    assert [d.name for d in detector.rules.detections] == ["second"]
    assert detector.rule_errors == 1 and "nope" in detector.last_rule_error
    alerts = asyncio.run(detector.process([event("b", severity=pb.P3_LOW)]))
    assert [a.rule for a in alerts] == ["second"]


def test_batches_holding_p0_events_are_evaluated_ahead_of_a_backlog() -> None:
    """A P0 batch offered after 6,000 queued bulk events makes the detector's first round on its own."""
    detector = Detector(DetectionConfig(rules_dir=str(PACK)), None, None, "ks")
    rounds: list[list[int]] = []
    done = asyncio.Event()
    evaluate_round = detector._evaluate

    async def recording(events: Sequence[pb.Event], *rest: Any) -> Any:
        rounds.append([ev.severity for ev in events])
        evaluated = await evaluate_round(events, *rest)
        if sum(len(r) for r in rounds) == 6001:
            done.set()
        return evaluated

    detector._evaluate = recording  # type: ignore[method-assign]

    async def go() -> None:
        done.clear()
        for _ in range(3):
            detector.offer([event("guestlist.viewed", severity=pb.P3_LOW) for _ in range(2000)])
        detector.offer([event("auth.account.locked", severity=pb.P0_CRITICAL)])
        detector.start()
        await asyncio.wait_for(done.wait(), 30)
        await detector.shutdown()

    asyncio.run(go())
    assert rounds[0] == [pb.P0_CRITICAL]
    assert sum(len(r) for r in rounds) == 6001


TEMPORAL = (
    rule("mfa_off", "  s:\n    event_type: auth.mfa.disabled\n  condition: s\n")
    + "---\n"
    + rule("payout_changed", "  s:\n    event_type: payment.payout.changed\n  condition: s\n")
    + "---\ntitle: t\nname: mfa_and_payout\nlevel: critical\ncorrelation:\n  type: temporal\n"
    "  rules: [mfa_off, payout_changed]\n  group-by: [user_id]\n  timespan: 10m\n"
)


def test_temporal_correlation_in_any_order_within_its_timespan(state_db: str) -> None:
    """A temporal correlation fires when all its rules match for a group within the timespan, in either
    order, and not when they are further apart or for different groups."""
    rules = parse_rules([("t.yml", TEMPORAL)])
    t0 = int(time.time() * 1000) - 3_600_000
    batches = [
        [event("payment.payout.changed", at_ms=t0, user_id="u-1")],
        [event("auth.mfa.disabled", at_ms=t0 + 60_000, user_id="u-1")],  # reverse order, 1 min apart: fires
        [
            event("auth.mfa.disabled", at_ms=t0, user_id="u-2"),
            event("payment.payout.changed", at_ms=t0 + 11 * 60_000, user_id="u-2"),
        ],
        [event("auth.mfa.disabled", at_ms=t0, user_id="u-3"), event("payment.payout.changed", at_ms=t0, user_id="u-4")],
    ]
    alerts = run(rules, batches, state_db)
    assert [(a.rule, a.group, a.severity) for a in alerts] == [("mfa_and_payout", "user_id=u-1", pb.P0_CRITICAL)]


def test_the_event_type_index_never_hides_a_match() -> None:
    """Evaluation through the event-type index matches exactly what the conditions say: case-folded
    types, an or whose other branch names no type, a not, and rules naming no type at all."""
    text = "\n---\n".join(
        [
            rule("typed", "  s:\n    event_type: GuestList.Export\n  condition: s\n"),
            rule("either", "  s:\n    event_type: a.b\n  t:\n    outcome: denied\n  condition: s or t\n"),
            rule("negated", "  s:\n    event_type: a.b\n  condition: not s\n"),
            rule("untyped", "  s:\n    user_id: u-1\n  condition: s\n"),
        ]
    )
    rules = parse_rules([("r.yml", text)])

    def names(ev: pb.Event) -> list[str]:
        return sorted(h.rule.name for h in evaluate(rules, [ev]).hits)

    assert names(event("guestlist.export", user_id="u-2")) == ["negated", "typed"]
    assert names(event("x.y", outcome=pb.OUTCOME_DENIED, user_id="u-1")) == ["either", "negated", "untyped"]
    assert names(event("a.b", user_id="u-2")) == ["either"]
