"""The scaling policy as pure functions: signals and state in, a decision and the next state out.

Nothing here reads a clock, a socket or a file; the scaler (services/scaler) gathers the inputs
and applies the outcome. Every call returns a :class:`Decision` that records its inputs, the
rule that fired and the outcome, so that ``auditmesh scaler status`` can explain each change.

Rules, in order:

1. ``max``: more processors than ``max_replicas`` -> down to the maximum at once.
2. ``floor``: fewer processors than the floor -> up to the floor at once. The floor is the
   predictive one (:func:`auditmesh.scaling.forecast.predictive_floor`), raised to
   ``emergency_replicas`` in emergency ("wedding day") mode, and never under ``min_replicas``.
3. ``reactive-up``: processing latency p99 over its target, a growing lane queue, more events
   per second than the processors' capacity, or threat detection behind (its queue of events
   over ``detection_queue_events``, or webhook alert delivery p99 over ``alert_delivery_p99_ms``:
   detection and alerting run in the processors, so their capacity is more processors), for
   ``up_after`` consecutive evaluations and ``up_cooldown_s`` after the last change -> at least
   one more processor, as many as the load needs (events/s / capacity per processor), at most
   ``max_replicas``.
4. ``reactive-down``: every signal under its low-water mark (``down_ratio`` of the latency
   target; the load fitting in one processor fewer at ``down_utilisation``) for ``down_after``
   consecutive evaluations, ``down_cooldown_s`` after the last change, not in emergency mode ->
   ``down_step`` fewer, never under the floor.
5. otherwise ``hold``.

Hysteresis comes from two things: a dead band (up over the target, down only well under it) and
the consecutive-evaluation counts, so a noisy load around a threshold changes nothing.

Write latency never scales processors (more writers only load the store more): over
``write_p99_ms`` it produces a storage recommendation with the numbers behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Decision", "PolicyConfig", "PolicyState", "Signals", "decide", "emergency_mode", "storage_recommendation"]


@dataclass(frozen=True)
class PolicyConfig:
    min_replicas: int = 1
    max_replicas: int = 8
    events_per_processor: float = 2000.0
    """Events per second one processor is planned to carry (its capacity for target tracking)."""
    processing_p99_ms: float = 50.0
    """Processing latency target: p99 of ingest's handling of a batch (stamp to routing, the
    waits for in-flight room included), as the performance monitor measures event processing.
    Not the round trip to a processor: that includes the store's write, which more processors
    do not make faster (write latency has its own rule)."""
    write_p99_ms: float = 10.0
    """Write latency target; over it the scaler recommends storage capacity."""
    queue_min_events: int = 1000
    """A lane queue counts as growing only past this many events in flight."""
    detection_queue_events: int = 1000
    """Events waiting for threat detection, summed over the processors, over which detection
    needs capacity (it runs in the processors, so: more processors)."""
    alert_delivery_p99_ms: float = 5000.0
    """Webhook alert delivery p99 over which alerting needs capacity (more processors)."""
    up_after: int = 2
    """Consecutive evaluations over a target before scaling up."""
    down_after: int = 5
    """Consecutive evaluations under every low-water mark before scaling down."""
    down_ratio: float = 0.5
    """Latency counts as low under this share of its target."""
    down_utilisation: float = 0.7
    """The load must fit in one processor fewer at this share of their capacity to scale down."""
    up_cooldown_s: float = 5.0
    down_cooldown_s: float = 120.0
    down_step: int = 1
    emergency_replicas: int = 4
    """The floor in emergency ("wedding day") mode."""


@dataclass(frozen=True)
class Signals:
    """What the load reports of the last seconds say."""

    events_in_per_s: float = 0.0
    processing_p99_ms: float | None = None
    """None when nothing was processed in the window (then it counts as low)."""
    write_p99_ms: float | None = None
    queue_depth: int = 0
    queue_growing: bool = False
    write_errors: int = 0
    detection_queue_events: int = 0
    alert_delivery_p99_ms: float | None = None
    """None when no alert was delivered in the window."""

    def as_inputs(self) -> dict[str, float]:
        out = {
            "events_in_per_s": round(self.events_in_per_s, 1),
            "queue_depth": float(self.queue_depth),
            "queue_growing": 1.0 if self.queue_growing else 0.0,
            "write_errors": float(self.write_errors),
            "detection_queue_events": float(self.detection_queue_events),
        }
        if self.alert_delivery_p99_ms is not None:
            out["alert_delivery_p99_ms"] = round(self.alert_delivery_p99_ms, 1)
        if self.processing_p99_ms is not None:
            out["processing_p99_ms"] = round(self.processing_p99_ms, 2)
        if self.write_p99_ms is not None:
            out["write_p99_ms"] = round(self.write_p99_ms, 2)
        return out


@dataclass(frozen=True)
class PolicyState:
    up_streak: int = 0
    down_streak: int = 0
    last_change_s: float = -math.inf
    """Time of the last change (the clock of the caller, in seconds)."""


@dataclass(frozen=True)
class Decision:
    at_s: float
    rule: str
    current: int
    target: int
    reason: str
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.target != self.current


def emergency_mode(manual: bool, live_weddings: int, latency_missed: bool, automatic_before: bool) -> tuple[bool, str]:
    """Whether emergency mode is on, and why: ``manual`` (the CLI), or ``automatic`` when a
    calendar wedding is live and a latency target is missed; automatic mode stays on while a
    wedding is live, so that the raised floor does not flap with the latency."""
    if manual:
        return True, "manual"
    automatic = live_weddings > 0 and (latency_missed or automatic_before)
    return (True, "automatic") if automatic else (False, "")


def _clamp(value: int, cfg: PolicyConfig) -> int:
    return max(cfg.min_replicas, min(cfg.max_replicas, value))


def decide(
    cfg: PolicyConfig,
    state: PolicyState,
    signals: Signals,
    current: int,
    now_s: float,
    *,
    floor: int = 0,
    floor_reason: str = "",
    emergency: bool = False,
) -> tuple[Decision, PolicyState]:
    """One evaluation: the decision and the state for the next one."""
    effective_floor = _clamp(max(floor, cfg.emergency_replicas if emergency else 0), cfg)
    capacity = cfg.events_per_processor
    latency = signals.processing_p99_ms
    over_latency = latency is not None and latency > cfg.processing_p99_ms
    over_load = signals.events_in_per_s > capacity * max(current, 1)
    over_detection = signals.detection_queue_events > cfg.detection_queue_events
    over_alerting = (
        signals.alert_delivery_p99_ms is not None and signals.alert_delivery_p99_ms > cfg.alert_delivery_p99_ms
    )
    over = over_latency or signals.queue_growing or over_load or over_detection or over_alerting
    low_latency = latency is None or latency < cfg.processing_p99_ms * cfg.down_ratio
    fits_fewer = signals.events_in_per_s <= capacity * max(current - 1, 0) * cfg.down_utilisation
    under = low_latency and not signals.queue_growing and fits_fewer and not (over_detection or over_alerting)
    up_streak = state.up_streak + 1 if over else 0
    down_streak = state.down_streak + 1 if under else 0
    inputs = {
        **signals.as_inputs(),
        "floor": float(effective_floor),
        "emergency": 1.0 if emergency else 0.0,
        "up_streak": float(up_streak),
        "down_streak": float(down_streak),
        "capacity_per_processor": capacity,
    }
    since_change = now_s - state.last_change_s

    def outcome(rule: str, target: int, reason: str) -> tuple[Decision, PolicyState]:
        changed = target != current
        next_state = PolicyState(
            up_streak=0 if changed else up_streak,
            down_streak=0 if changed else down_streak,
            last_change_s=now_s if changed else state.last_change_s,
        )
        return Decision(now_s, rule, current, target, reason, inputs), next_state

    if current > cfg.max_replicas:
        return outcome("max", cfg.max_replicas, f"{current} processors is over the maximum {cfg.max_replicas}")
    if current < effective_floor:
        why = "emergency (wedding day) mode" if emergency and effective_floor > _clamp(floor, cfg) else floor_reason
        return outcome("floor", effective_floor, f"under the floor of {effective_floor}: {why or 'minimum replicas'}")
    if up_streak >= cfg.up_after and current < cfg.max_replicas:
        reasons = []
        if over_latency:
            reasons.append(f"processing p99 {latency:.1f} ms > {cfg.processing_p99_ms:g} ms")
        if signals.queue_growing:
            reasons.append(f"lane queue growing ({signals.queue_depth} events in flight)")
        if over_load:
            reasons.append(f"{signals.events_in_per_s:.0f} ev/s > {current} x {capacity:g} ev/s")
        if over_detection:
            reasons.append(f"detection queue {signals.detection_queue_events} events > {cfg.detection_queue_events}")
        if over_alerting:
            reasons.append(
                f"alert delivery p99 {signals.alert_delivery_p99_ms:.0f} ms > {cfg.alert_delivery_p99_ms:g} ms"
            )
        needed = math.ceil(signals.events_in_per_s / capacity) if capacity > 0 else current + 1
        target = _clamp(max(current + 1, needed), cfg)
        reason = f"{'; '.join(reasons)} for {up_streak} evaluations"
        if since_change < cfg.up_cooldown_s:
            return outcome("cooldown", current, f"{reason}, but the last change was {since_change:.0f}s ago")
        return outcome("reactive-up", target, reason)
    if down_streak >= cfg.down_after and current > effective_floor:
        target = max(effective_floor, current - cfg.down_step)
        reason = (
            f"{signals.events_in_per_s:.0f} ev/s fits {current - 1} x {capacity:g} ev/s at "
            f"{cfg.down_utilisation:.0%} and latency is low, for {down_streak} evaluations"
        )
        if emergency:
            return outcome("hold", current, f"{reason}, but emergency mode holds capacity")
        if since_change < cfg.down_cooldown_s:
            return outcome("cooldown", current, f"{reason}, but the last change was {since_change:.0f}s ago")
        return outcome("reactive-down", target, reason)
    return outcome("hold", current, "within targets")


def storage_recommendation(cfg: PolicyConfig, signals: Signals, store_nodes: int = 1) -> str:
    """A recommendation to add Cassandra capacity when write latency is over its target, with
    the numbers behind it; empty otherwise. Never an action: the operator adds nodes."""
    p99 = signals.write_p99_ms
    if p99 is None or p99 <= cfg.write_p99_ms:
        return ""
    wanted = math.ceil(store_nodes * p99 / cfg.write_p99_ms)
    return (
        f"write p99 {p99:.1f} ms > {cfg.write_p99_ms:g} ms at {signals.events_in_per_s:.0f} ev/s: "
        f"add Cassandra capacity (about {wanted} nodes for {store_nodes} now, if write latency scales with load "
        f"per node); write errors in the window: {signals.write_errors}"
    )
