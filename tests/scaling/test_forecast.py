"""The calendar as a forecast input: capacity rises 30 minutes before the first ceremony of a
busy Saturday, with the reason in the decision log, and an empty calendar raises nothing."""

from __future__ import annotations

import asyncio
import datetime as dt

from auditmesh.scaling.actuators import KedaActuator
from auditmesh.scaling.calendar import Wedding, generate
from auditmesh.scaling.engine import Engine, EngineConfig
from auditmesh.scaling.forecast import ForecastConfig, predictive_floor, required_at
from auditmesh.scaling.policy import PolicyConfig
from auditmesh.scaling.reports import ReportWindow
from auditpb.v1 import scaler_pb2 as spb

LONDON = "Europe/London"


def next_saturday() -> dt.date:
    today = dt.datetime.now(dt.UTC).date()
    return today + dt.timedelta(days=(5 - today.weekday()) % 7 or 7)


def forty_weddings(day: dt.date) -> list[Wedding]:
    """40 weddings in London, ceremonies from 13:00 to 17:50 local, ten minutes apart, 120 guests each."""
    return [Wedding(f"sat-{i}", day, LONDON, dt.time(13 + i // 6 % 5, (i % 6) * 10), 120, 8) for i in range(40)]


def engine_at(weddings: list[Wedding], now: list[float]) -> Engine:
    cfg = EngineConfig(policy=PolicyConfig(min_replicas=1, max_replicas=12), forecast=ForecastConfig(lead_s=1800))
    return Engine(cfg, ReportWindow(), KedaActuator(lambda: 1), weddings=lambda: weddings, clock=lambda: now[0])


def test_forty_weddings_next_saturday_raise_capacity_thirty_minutes_before_the_first_ceremony() -> None:
    """31 minutes before the first ceremony the scaler holds at 1; at 30 minutes before it raises the
    floor with a forecast reason naming the weddings; later it follows the day's peak."""
    weddings = forty_weddings(next_saturday())
    first = min(w.ceremony_at() for w in weddings)
    now = [(first - dt.timedelta(minutes=31)).timestamp()]
    engine = engine_at(weddings, now)
    early = asyncio.run(engine.tick())
    assert (early.rule, early.target) == ("hold", 1)
    now[0] = (first - dt.timedelta(minutes=30)).timestamp()
    raised = asyncio.run(engine.tick())
    assert raised.rule == "floor" and raised.target > 1
    assert "forecast" in raised.reason and "in 30 min" in raised.reason
    assert "active weddings" in raised.reason and "on a weekend" in raised.reason
    status = engine.status()
    assert status.target == raised.target and status.floor == raised.target
    assert [d.rule for d in status.decisions][-1] == "floor"
    assert status.decisions[-1].reason == raised.reason
    assert any(point.active_weddings == 40 for point in status.forecast)  # the afternoon peak is in the forecast
    # At the peak every wedding is active: 1 x (1 + 0.1 x 40) x 2 (Saturday) = 10, x 1.5 in season.
    peak = required_at(engine.cfg.forecast, weddings, first + dt.timedelta(hours=5))
    season = weddings[0].wedding_date.month in engine.cfg.forecast.season_months
    assert peak.active == 40 and peak.required == (15 if season else 10)


def test_an_empty_calendar_raises_nothing() -> None:
    """The same Saturday with no wedding in the calendar: the floor stays at the base all day."""
    day = next_saturday()
    engine = engine_at([], [0.0])
    for hour in range(0, 24):
        at = dt.datetime.combine(day, dt.time(hour), dt.UTC)
        engine._clock = lambda at=at: at.timestamp()  # type: ignore[misc]
        decision = asyncio.run(engine.tick())
        assert (decision.rule, decision.target) == ("hold", 1), (hour, decision)
    floor, reason = predictive_floor(ForecastConfig(), [], dt.datetime.combine(day, dt.time(12), dt.UTC), 1)
    assert floor == 1 and "no wedding active" in reason


def test_the_generator_peaks_on_season_saturdays() -> None:
    """A generated year has most weddings on Saturdays and more per day in May-October than out of season."""
    weddings = generate(dt.date(2027, 1, 1), 365, saturday_peak=60, seed=4)
    by_weekday = [sum(1 for w in weddings if w.wedding_date.weekday() == d) for d in range(7)]
    assert by_weekday[5] == max(by_weekday) and by_weekday[5] > 0.4 * len(weddings)
    season = [w for w in weddings if 5 <= w.wedding_date.month <= 10]
    assert len(season) / 184 > 1.8 * (len(weddings) - len(season)) / 181
    assert all(w.guests and w.vendors and w.ceremony_time for w in weddings)
    peak_saturday = max(sum(1 for w in weddings if w.wedding_date == day) for day in {w.wedding_date for w in weddings})
    assert 40 <= peak_saturday <= 100


def test_a_live_wedding_with_a_missed_latency_target_turns_emergency_mode_on_automatically() -> None:
    """With a calendar wedding live and processing p99 over its target, the engine enters
    automatic emergency mode and raises the floor; once no wedding is live it leaves it."""
    now = dt.datetime.now(dt.UTC)
    ceremony = (now - dt.timedelta(minutes=30)).replace(microsecond=0)
    live = [Wedding("live-1", ceremony.date(), "UTC", ceremony.time())]
    clock = [now.timestamp()]
    weddings: list[Wedding] = list(live)
    cfg = EngineConfig(policy=PolicyConfig(min_replicas=1, max_replicas=12, emergency_replicas=5, up_after=99))
    window = ReportWindow()
    engine = Engine(
        cfg, window, KedaActuator(lambda: 1), weddings=lambda: weddings, clock=lambda: clock[0], timer=lambda: clock[0]
    )
    slow = spb.LoadReport(
        service="ingest",
        instance="ingest-a",
        latencies=[spb.StageLatency(stage="ingest_handling:normal", p99_us=120_000, count=50)],
    )
    engine.report(slow)
    decision = asyncio.run(engine.tick())
    assert engine.emergency and engine.emergency_source == "automatic"
    assert (decision.rule, decision.target) == ("floor", 5) and "emergency" in decision.reason
    assert engine.status().emergency_source == "automatic"
    weddings.clear()
    clock[0] += 1
    asyncio.run(engine.tick())
    assert not engine.emergency and engine.status().emergency_source == ""
