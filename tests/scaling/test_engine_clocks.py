"""The scaler's two clocks (a pure unit): a step of the wall clock moves the stamps of decisions
but neither ends a cool-down early nor ages the load reports out."""

from __future__ import annotations

import asyncio

from auditmesh.scaling.actuators import KedaActuator
from auditmesh.scaling.engine import Engine, EngineConfig
from auditmesh.scaling.policy import PolicyConfig
from auditmesh.scaling.reports import ReportWindow
from auditpb.v1 import scaler_pb2 as spb


def test_a_wall_clock_step_neither_ends_the_cooldown_nor_ages_the_reports_out() -> None:
    """Under a load that needs three processors the engine scales up at once. The wall clock then
    jumps an hour ahead while one second passes: the next evaluation still sees the load (its
    report is one second old, not an hour) and stays in the up cool-down; the decisions carry the
    stepped wall-clock time."""
    wall, timer = [1_000_000.0], [50.0]
    replicas = [1]
    cfg = EngineConfig(policy=PolicyConfig(events_per_processor=100, up_after=1, up_cooldown_s=30, max_replicas=8))
    engine = Engine(
        cfg,
        ReportWindow(window_s=10, recent_s=3),
        KedaActuator(lambda: replicas[0]),
        clock=lambda: wall[0],
        timer=lambda: timer[0],
    )
    timer[0] += 60  # past the cool-down that counts from the scaler's start
    load = spb.LoadReport(
        service="ingest", instance="ingest-a", lanes=[spb.LaneLoad(lane="normal", events_in_per_s=300)]
    )
    engine.report(load)
    first = asyncio.run(engine.tick())
    assert (first.rule, first.target) == ("reactive-up", 3)
    assert first.at_s == 1_000_000.0
    replicas[0] = 3
    wall[0] += 3600
    timer[0] += 1
    engine.report(
        spb.LoadReport(service="ingest", instance="ingest-a", lanes=[spb.LaneLoad(lane="normal", events_in_per_s=900)])
    )
    second = asyncio.run(engine.tick())
    assert second.inputs["events_in_per_s"] > 300, second
    assert second.rule == "cooldown" and second.target == 3, second
    assert second.at_s == 1_003_600.0
    assert [m.age_s for m in engine.status().members] == [0.0]
