"""The scaling policy as pure functions: hysteresis, cool-downs, min and max, emergency mode and
the predictive floor, each decision explained."""

from __future__ import annotations

import random

from auditmesh.scaling.policy import (
    Decision,
    PolicyConfig,
    PolicyState,
    Signals,
    decide,
    emergency_mode,
    storage_recommendation,
)

CFG = PolicyConfig(
    min_replicas=1,
    max_replicas=6,
    events_per_processor=1000,
    up_after=2,
    down_after=5,
    up_cooldown_s=5,
    down_cooldown_s=60,
    emergency_replicas=4,
)


def run(
    loads: list[float], replicas: int, cfg: PolicyConfig = CFG, step_s: float = 1.0, **kwargs: object
) -> tuple[list[Decision], int]:
    """Evaluate once a second over ``loads`` (events/s), applying each change; the decisions and
    the final replica count."""
    state = PolicyState(last_change_s=-1e9)
    decisions = []
    for i, load in enumerate(loads):
        decision, state = decide(cfg, state, Signals(events_in_per_s=load), replicas, i * step_s, **kwargs)  # type: ignore[arg-type]
        decisions.append(decision)
        replicas = decision.target
    return decisions, replicas


def test_noisy_load_around_the_threshold_does_not_flap() -> None:
    """A load alternating 5% either side of the processors' capacity never changes the count, and
    a random load within 10% of it changes it at most once, upwards, over five minutes."""
    decisions, replicas = run([2100 if i % 2 else 1900 for i in range(300)], 2)
    assert replicas == 2
    assert {d.rule for d in decisions} == {"hold"}
    for seed in range(20):
        rng = random.Random(seed)
        decisions, replicas = run([2000 * rng.uniform(0.9, 1.1) for _ in range(300)], 2)
        changes = [(d.current, d.target) for d in decisions if d.changes]
        assert changes in ([], [(2, 3)]), (seed, changes)


def test_a_sustained_rise_scales_up_once_then_holds_and_a_fall_needs_the_dead_band() -> None:
    """Over capacity twice in a row scales up to what the load needs; just under capacity after
    that is inside the dead band and holds; only well under it scales down, after the cool-down."""
    decisions, replicas = run([2500] * 3, 2)
    ups = [d for d in decisions if d.changes]
    assert [(d.rule, d.current, d.target) for d in ups] == [("reactive-up", 2, 3)]
    assert "2500 ev/s > 2 x 1000 ev/s" in ups[0].reason
    assert ups[0].inputs["events_in_per_s"] == 2500
    decisions, replicas = run([2500, 2500] + [2000] * 100, 2)
    assert replicas == 3  # 2000 ev/s does not fit 2 processors at 70%: no scale-down
    decisions, replicas = run([2500, 2500] + [500] * 100, 2)
    downs = [d for d in decisions if d.rule == "reactive-down"]
    assert downs and downs[0].at_s - 1 >= CFG.down_cooldown_s  # the first one waits for the cool-down
    assert [(d.current, d.target) for d in downs] == [(3, 2)]  # the next one waits for another cool-down
    assert replicas == 2


def test_the_cool_down_holds_a_second_scale_up_and_says_why() -> None:
    """A second scale-up inside ``up_cooldown_s`` is held with rule ``cooldown``; after it, it happens."""
    decisions, replicas = run([3500] * 12, 2, cfg=PolicyConfig(**{**CFG.__dict__, "max_replicas": 3}))
    # 3500 ev/s needs 4; max 3: one change, then holds at max (no rule fires at max).
    assert [(d.current, d.target) for d in decisions if d.changes] == [(2, 3)]
    cfg = PolicyConfig(**{**CFG.__dict__, "up_cooldown_s": 5.0})
    state = PolicyState(last_change_s=-1e9)
    d1, state = decide(cfg, state, Signals(events_in_per_s=1500), 1, 0.0)
    d2, state = decide(cfg, state, Signals(events_in_per_s=1500), 1, 1.0)
    assert (d1.rule, d2.rule, d2.target) == ("hold", "reactive-up", 2)
    d3, state = decide(cfg, state, Signals(events_in_per_s=2500), 2, 2.0)
    d4, state = decide(cfg, state, Signals(events_in_per_s=2500), 2, 3.0)
    assert d4.rule == "cooldown" and d4.target == 2 and "last change was 2s ago" in d4.reason
    d5, state = decide(cfg, state, Signals(events_in_per_s=2500), 2, 6.5)
    assert d5.rule == "reactive-up" and d5.target == 3


def test_min_and_max_bound_every_outcome() -> None:
    """A huge load stops at max_replicas, no load never goes under min_replicas, and a count over
    the maximum comes down to it at once."""
    _, replicas = run([1e9] * 50, 1)
    assert replicas == CFG.max_replicas
    cfg = PolicyConfig(**{**CFG.__dict__, "min_replicas": 2, "down_cooldown_s": 0})
    _, replicas = run([0] * 50, 5, cfg=cfg)
    assert replicas == 2
    decision, _ = decide(CFG, PolicyState(), Signals(), 9, 0.0)
    assert (decision.rule, decision.target) == ("max", CFG.max_replicas)
    decision, _ = decide(CFG, PolicyState(), Signals(), 0, 0.0)
    assert (decision.rule, decision.target) == ("floor", CFG.min_replicas)


def test_latency_or_a_growing_queue_scale_up_and_write_latency_only_recommends_storage() -> None:
    """Processing p99 over 50 ms or a growing queue adds processors; write p99 over 10 ms changes
    nothing but yields a storage recommendation with its numbers."""
    state = PolicyState(last_change_s=-1e9)
    slow = Signals(events_in_per_s=10, processing_p99_ms=80.0)
    for t in range(2):
        decision, state = decide(CFG, state, slow, 2, float(t))
    assert decision.rule == "reactive-up" and "processing p99 80.0 ms > 50 ms" in decision.reason
    state = PolicyState(last_change_s=-1e9)
    queued = Signals(events_in_per_s=10, queue_depth=5000, queue_growing=True)
    for t in range(2):
        decision, state = decide(CFG, state, queued, 2, float(t))
    assert decision.rule == "reactive-up" and "queue growing (5000 events" in decision.reason
    writes = Signals(events_in_per_s=10, write_p99_ms=30.0)
    _, replicas = run([10] * 3, 2, cfg=CFG)
    decision, _ = decide(CFG, PolicyState(last_change_s=-1e9), writes, 2, 0.0)
    assert not decision.changes
    advice = storage_recommendation(CFG, writes, store_nodes=3)
    assert "write p99 30.0 ms > 10 ms" in advice and "about 9 nodes for 3 now" in advice
    assert storage_recommendation(CFG, Signals(write_p99_ms=9.0)) == ""


def test_emergency_mode_raises_the_floor_and_holds_capacity() -> None:
    """In emergency mode the floor is emergency_replicas and nothing scales down; manual mode is
    on until switched off, automatic mode needs a live wedding and a missed latency target and
    stays on while the wedding is live."""
    decision, _ = decide(CFG, PolicyState(), Signals(), 1, 0.0, emergency=True)
    assert (decision.rule, decision.target) == ("floor", 4)
    assert "emergency" in decision.reason
    cfg = PolicyConfig(**{**CFG.__dict__, "down_cooldown_s": 0})
    decisions, replicas = run([0] * 30, 6, cfg=cfg, emergency=True)
    assert replicas == 6 and not any(d.changes for d in decisions)
    assert any("emergency mode holds capacity" in d.reason for d in decisions)
    assert emergency_mode(True, 0, False, False) == (True, "manual")
    assert emergency_mode(False, 0, True, False) == (False, "")  # no wedding live
    assert emergency_mode(False, 2, False, False) == (False, "")  # targets met
    assert emergency_mode(False, 2, True, False) == (True, "automatic")
    assert emergency_mode(False, 2, False, True) == (True, "automatic")  # latched while live
    assert emergency_mode(False, 0, False, True) == (False, "")


def test_scale_down_never_goes_under_the_predictive_floor() -> None:
    """With the forecast's floor at 3, an idle mesh of 5 comes down to 3 and stays there, also with
    a scale-down step that would pass it."""
    cfg = PolicyConfig(**{**CFG.__dict__, "down_cooldown_s": 0})
    decisions, replicas = run([0] * 60, 5, cfg=cfg, floor=3, floor_reason="forecast: 3 required")
    assert replicas == 3
    assert [d.target for d in decisions if d.changes] == [4, 3]
    steep = PolicyConfig(**{**cfg.__dict__, "down_step": 2})
    decisions, replicas = run([0] * 60, 4, cfg=steep, floor=3)
    assert [(d.current, d.target) for d in decisions if d.changes] == [(4, 3)]  # a step of 2 stops at the floor
    decision, _ = decide(cfg, PolicyState(), Signals(), 2, 0.0, floor=3, floor_reason="forecast: 3 required")
    assert (decision.rule, decision.target) == ("floor", 3) and "forecast: 3 required" in decision.reason


def test_detection_behind_scales_up_and_holds_off_scale_down() -> None:
    """A detection queue over 1,000 events or webhook alert delivery p99 over 5 s adds processors
    (detection and alerting run in them), and while either lasts an idle mesh is not shrunk."""
    for behind, says in (
        (Signals(events_in_per_s=10, detection_queue_events=4000), "detection queue 4000 events > 1000"),
        (Signals(events_in_per_s=10, alert_delivery_p99_ms=7500.0), "alert delivery p99 7500 ms > 5000 ms"),
    ):
        state = PolicyState(last_change_s=-1e9)
        for t in range(2):
            decision, state = decide(CFG, state, behind, 2, float(t))
        assert decision.rule == "reactive-up" and decision.target == 3 and says in decision.reason, decision
        state = PolicyState(last_change_s=-1e9)
        for t in range(10):
            decision, state = decide(CFG, state, Signals(events_in_per_s=0.0, **_detection(behind)), 3, float(t))
        assert decision.target >= 3, decision
    within = Signals(events_in_per_s=10, detection_queue_events=900, alert_delivery_p99_ms=4000.0)
    state = PolicyState(last_change_s=-1e9)
    for t in range(4):
        decision, state = decide(CFG, state, within, 2, float(t))
    assert not decision.changes, decision


def _detection(signals: Signals) -> dict[str, object]:
    return {
        "detection_queue_events": signals.detection_queue_events,
        "alert_delivery_p99_ms": signals.alert_delivery_p99_ms,
    }
