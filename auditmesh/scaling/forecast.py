"""Required capacity from the wedding calendar (pure functions).

The specification's formula::

    required = base x (1 + 0.1 x active weddings) x 1.5 in season x 2.0 on weekends

with its constants in :class:`ForecastConfig`. A wedding is active from its ceremony's start
for ``wedding_hours``. The season and weekend factors describe wedding traffic, so they apply
when at least one wedding is active (its local date in season, on a Saturday or Sunday); with
no wedding active the requirement is ``base``, so an empty calendar never raises capacity.

The predictive floor looks ``lead_s`` ahead (30 minutes): when what will be required then is
more than ``ahead_ratio`` (1.2) x the processors running now, the floor rises now, before the
first ceremony; otherwise the floor is what is required now.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from auditmesh.scaling.calendar import Wedding

__all__ = ["ForecastConfig", "Requirement", "active_weddings", "forecast", "predictive_floor", "required_at"]


@dataclass(frozen=True)
class ForecastConfig:
    base_replicas: float = 1.0
    wedding_factor: float = 0.1
    season_factor: float = 1.5
    weekend_factor: float = 2.0
    season_months: tuple[int, ...] = (5, 6, 7, 8, 9, 10)
    wedding_hours: float = 6.0
    lead_s: float = 1800.0
    ahead_ratio: float = 1.2


@dataclass(frozen=True)
class Requirement:
    at: dt.datetime
    required: int
    active: int
    reason: str


def active_weddings(weddings: Sequence[Wedding], at: dt.datetime, hours: float) -> list[Wedding]:
    """The weddings whose ceremony started at or before ``at`` and less than ``hours`` before."""
    span = dt.timedelta(hours=hours)
    return [w for w in weddings if w.ceremony_at() <= at < w.ceremony_at() + span]


def required_at(cfg: ForecastConfig, weddings: Sequence[Wedding], at: dt.datetime) -> Requirement:
    active = active_weddings(weddings, at, cfg.wedding_hours)
    if not active:
        return Requirement(at, max(1, math.ceil(cfg.base_replicas)), 0, "no wedding active: base capacity")
    factor = 1 + cfg.wedding_factor * len(active)
    parts = [f"{cfg.base_replicas:g} x (1 + {cfg.wedding_factor:g} x {len(active)} active weddings)"]
    if any(w.wedding_date.month in cfg.season_months for w in active):
        factor *= cfg.season_factor
        parts.append(f"x {cfg.season_factor:g} in season")
    if any(w.wedding_date.weekday() >= 5 for w in active):
        factor *= cfg.weekend_factor
        parts.append(f"x {cfg.weekend_factor:g} on a weekend")
    value = cfg.base_replicas * factor
    first = min(w.ceremony_at() for w in active)
    guests = sum(w.guests or 0 for w in active)
    reason = f"{' '.join(parts)} = {value:.2f}; first ceremony {first:%Y-%m-%d %H:%M} UTC, {guests} guests expected"
    return Requirement(at, max(1, math.ceil(value - 1e-9)), len(active), reason)


def predictive_floor(
    cfg: ForecastConfig, weddings: Sequence[Wedding], now: dt.datetime, current: int
) -> tuple[int, str]:
    """The floor now and why: what is required now, raised to what will be required in
    ``lead_s`` when that is over ``ahead_ratio`` x ``current``."""
    present = required_at(cfg, weddings, now)
    ahead = required_at(cfg, weddings, now + dt.timedelta(seconds=cfg.lead_s))
    if ahead.required > present.required and ahead.required > cfg.ahead_ratio * current:
        minutes = cfg.lead_s / 60
        return ahead.required, (
            f"forecast: {ahead.required} processors required in {minutes:.0f} min "
            f"(> {cfg.ahead_ratio:g} x {current} running): {ahead.reason}"
        )
    return present.required, f"required now: {present.reason}"


def forecast(
    cfg: ForecastConfig, weddings: Sequence[Wedding], now: dt.datetime, hours: float = 6.0, step_s: float = 1800.0
) -> list[Requirement]:
    """What is required at ``now`` and every ``step_s`` for the next ``hours``."""
    steps = int(hours * 3600 // step_s)
    return [required_at(cfg, weddings, now + dt.timedelta(seconds=i * step_s)) for i in range(steps + 1)]
