"""The scaler's engine: every interval it summarises the load reports, reads the calendar's
forecast, asks the policy and hands the target to the actuator, recording each decision."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from auditmesh.scaling.actuators import Actuator
from auditmesh.scaling.calendar import Wedding
from auditmesh.scaling.forecast import ForecastConfig, active_weddings, forecast, predictive_floor
from auditmesh.scaling.policy import Decision, PolicyConfig, PolicyState, Signals, decide, emergency_mode
from auditmesh.scaling.policy import storage_recommendation as recommend_storage
from auditmesh.scaling.reports import ReportWindow
from auditpb.v1 import scaler_pb2 as spb

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger("auditmesh.scaling")


@dataclass(frozen=True)
class EngineConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    decisions_kept: int = 200
    forecast_hours: float = 6.0
    store_nodes: int = 1


class Engine:
    """Holds the scaler's state; ``tick`` is one evaluation (called every interval)."""

    def __init__(
        self,
        cfg: EngineConfig,
        window: ReportWindow,
        actuator: Actuator,
        *,
        weddings: Callable[[], Sequence[Wedding]] = lambda: (),
        members: Callable[[], Sequence[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` is the wall clock: the calendar and the stamps of decisions. ``timer`` measures
        intervals (cool-downs, the age of load reports) and must not jump when the wall clock is
        stepped, or a step forward would end a cool-down early and age every report out at once."""
        self.cfg = cfg
        self.window = window
        self.actuator = actuator
        self._weddings = weddings
        self._members = members
        self._clock = clock
        self._timer = timer
        # The cool-downs count from the scaler's start: it has seen no load yet.
        self.state = PolicyState(last_change_s=timer())
        self.decisions: deque[tuple[Decision, bool]] = deque(maxlen=cfg.decisions_kept)
        self.manual_emergency = False
        self.emergency = False
        self.emergency_source = ""
        self.floor = cfg.policy.min_replicas
        self.target = actuator.replicas()
        self.signals = Signals()
        self.storage_recommendation = ""

    def report(self, report: spb.LoadReport) -> None:
        """A load report, received now."""
        self.window.add(report, self._timer())

    async def tick(self) -> Decision:
        now_s, at = self._clock(), self._timer()
        now = dt.datetime.fromtimestamp(now_s, dt.UTC)
        current = self.actuator.replicas()
        signals = self.window.signals(at, self.cfg.policy.queue_min_events)
        weddings = self._weddings()
        floor, floor_reason = predictive_floor(self.cfg.forecast, weddings, now, current)
        live = len(active_weddings(weddings, now, self.cfg.forecast.wedding_hours))
        missed = signals.processing_p99_ms is not None and signals.processing_p99_ms > self.cfg.policy.processing_p99_ms
        self.emergency, self.emergency_source = emergency_mode(
            self.manual_emergency, live, missed, self.emergency_source == "automatic"
        )
        decision, self.state = decide(
            self.cfg.policy,
            self.state,
            signals,
            current,
            at,
            floor=floor,
            floor_reason=floor_reason,
            emergency=self.emergency,
        )
        decision = dataclasses.replace(decision, at_s=now_s)
        decision.inputs["live_weddings"] = float(live)
        self.signals = signals
        self.floor = int(decision.inputs["floor"])
        self.storage_recommendation = recommend_storage(self.cfg.policy, signals, self.cfg.store_nodes)
        applied = False
        if decision.changes:
            log.info("%s: %d -> %d processors: %s", decision.rule, decision.current, decision.target, decision.reason)
            await self.actuator.scale_to(decision.target)
            applied = True
        self.target = decision.target
        last = self.decisions[-1][0] if self.decisions else None
        # Every change is kept; a run of identical holds is kept once (the latest replaces it).
        if last is not None and not decision.changes and not last.changes and last.rule == decision.rule:
            self.decisions[-1] = (decision, applied)
        else:
            self.decisions.append((decision, applied))
        return decision

    def set_emergency(self, on: bool) -> None:
        self.manual_emergency = on

    def status(self) -> spb.ScalerStatus:
        now_s = self._clock()
        now = dt.datetime.fromtimestamp(now_s, dt.UTC)
        policy = self.cfg.policy
        out = spb.ScalerStatus(
            current=self.actuator.replicas(),
            target=self.target,
            min_replicas=policy.min_replicas,
            max_replicas=policy.max_replicas,
            floor=self.floor,
            emergency=self.emergency or self.manual_emergency,
            emergency_source=self.emergency_source or ("manual" if self.manual_emergency else ""),
            events_in_per_s=self.signals.events_in_per_s,
            processing_p99_us=(self.signals.processing_p99_ms or 0.0) * 1000,
            write_p99_us=(self.signals.write_p99_ms or 0.0) * 1000,
            queue_depth=self.signals.queue_depth,
            storage_recommendation=self.storage_recommendation,
            actuator=self.actuator.name,
        )
        for req in forecast(self.cfg.forecast, self._weddings(), now, self.cfg.forecast_hours):
            out.forecast.append(
                spb.ForecastPoint(
                    at_us=int(req.at.timestamp() * 1e6),
                    required=min(max(req.required, policy.min_replicas), policy.max_replicas),
                    active_weddings=req.active,
                    reason=req.reason,
                )
            )
        for decision, applied in self.decisions:
            out.decisions.append(
                spb.Decision(
                    at_us=int(decision.at_s * 1e6),
                    rule=decision.rule,
                    current=decision.current,
                    target=decision.target,
                    reason=decision.reason,
                    inputs=decision.inputs,
                    applied=applied,
                )
            )
        members = set(self._members())
        for _key, (report, age) in sorted(self.window.latest(self._timer()).items()):
            rate = sum(
                lane.events_in_per_s if report.service == "ingest" else lane.events_out_per_s for lane in report.lanes
            )
            out.members.append(
                spb.Member(
                    address=report.instance,
                    service=report.service,
                    events_per_s=rate,
                    events_total=report.events_total,
                    age_s=age,
                )
            )
            members.discard(report.instance)
        for address in sorted(members):
            out.members.append(spb.Member(address=address, service="processor", age_s=-1))
        return out
