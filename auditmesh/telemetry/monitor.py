"""The performance monitor: every second, what the services' metrics say against the
specification's thresholds, with alerts that are raised and cleared with hysteresis.

Checks (each a number per interval, compared with its threshold):

    event_processing     p99 of ingest's handling of a batch (stamp to routing), all lanes    < 1 ms
    storage_write        p99 of the processors' store writes in the interval, or the age of   < 5 ms
                         the oldest write under way when that is larger (a hung store shows
                         at once, not when its writes finally end)
    alert_delivery       p99 of the query services' alert delivery (a new alert, from ingest's  < 100 ms
                         receipt of its first triggering event to its handoff to a
                         SubscribeAlerts caller)
    system_overhead      CPU share of the busiest service's metrics endpoint over the last   < 0.1 %
                         10 s, from 5 s on (one interval holds one scrape: too few for a share)
    metrics_unreachable  services whose metrics endpoint did not answer (the others' checks  0
                         are blind to them); one not answering yet in the monitor's first
                         10 s is still starting

On a wedding day (a wedding of the calendar is today in its time zone) the latency thresholds
are multiplied by ``wedding_day_factor`` (stricter). An alert is raised after ``raise_after``
intervals over the threshold and cleared after ``clear_after`` intervals at or under
``clear_ratio`` times it (or with nothing to measure): a value hovering at the threshold does not
flap.

Alerts are stored in Redis under a prefix of the mesh's own (``am:perf:{ingest port}`` in a
:class:`~auditmesh.mesh.MeshLayout`, so meshes sharing a database keep apart); ``auditmesh
status`` shows them, ``auditmesh top`` reads them from the monitor's metrics endpoint:

    {prefix}:alerts    hash: check -> JSON of the active alert
    {prefix}:history   list: JSON of every raise and clear, newest first (the last 1,000)
    {prefix}:checked   JSON of the last check (time, wedding day, values), expires after 30 s
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auditmesh.priority import CalendarEntry, snapshot_calendar
from auditmesh.telemetry.prometheus import counter, gauge
from auditmesh.telemetry.scrape import Scrape, fetch, quantile, rate, window

__all__ = [
    "CHECKS",
    "AlertBoard",
    "Change",
    "Checks",
    "Hysteresis",
    "PerformanceMonitor",
    "Thresholds",
    "measure",
    "read_alerts",
]

log = logging.getLogger("auditmesh.monitor")

_HISTORY = 1000
OVERHEAD_WINDOW_S = 10.0
STARTUP_S = 10.0
CHECKS = ("event_processing", "storage_write", "alert_delivery", "system_overhead", "metrics_unreachable")


@dataclass(frozen=True)
class Thresholds:
    processing_s: float = 0.001
    write_s: float = 0.005
    alert_delivery_s: float = 0.1
    overhead: float = 0.001
    wedding_day_factor: float = 0.5

    def of(self, wedding_day: bool) -> dict[str, float]:
        """The threshold of every check, the latencies scaled on a wedding day."""
        f = self.wedding_day_factor if wedding_day else 1.0
        return {
            "event_processing": self.processing_s * f,
            "storage_write": self.write_s * f,
            "alert_delivery": self.alert_delivery_s * f,
            "system_overhead": self.overhead,
            "metrics_unreachable": 0.0,
        }


@dataclass(frozen=True)
class Hysteresis:
    raise_after: int = 1
    clear_after: int = 3
    clear_ratio: float = 0.8


@dataclass(frozen=True)
class Change:
    """An alert raised or cleared."""

    check: str
    raised: bool
    value: float | None
    threshold: float
    wedding_day: bool
    at: float
    """Unix time."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "state": "raised" if self.raised else "cleared",
            "value": self.value,
            "threshold": self.threshold,
            "wedding_day": self.wedding_day,
            "at": self.at,
        }


@dataclass
class _State:
    active: bool = False
    over: int = 0
    under: int = 0
    raised: int = 0
    since: float = 0.0
    value: float | None = None
    worst: float | None = None
    threshold: float = 0.0


class Checks:
    """Alert states of every check; :meth:`update` takes one interval's values."""

    def __init__(self, thresholds: Thresholds, hysteresis: Hysteresis) -> None:
        self.thresholds = thresholds
        self.hysteresis = hysteresis
        self.states = {check: _State() for check in CHECKS}
        self.wedding_day = False

    def update(self, values: Mapping[str, float | None], wedding_day: bool, now: float) -> list[Change]:
        h = self.hysteresis
        limits = self.thresholds.of(wedding_day)
        self.wedding_day = wedding_day
        changes: list[Change] = []
        for check, state in self.states.items():
            value = values.get(check)
            limit = limits[check]
            state.value, state.threshold = value, limit
            if value is not None and value > limit:
                state.over += 1
                state.under = 0
                if state.active:
                    state.worst = max(state.worst or value, value)
                elif state.over >= h.raise_after:
                    state.active, state.since, state.worst = True, now, value
                    state.raised += 1
                    changes.append(Change(check, True, value, limit, wedding_day, now))
            else:
                state.over = 0
                if value is None or value <= limit * h.clear_ratio:
                    state.under += 1
                else:  # between the clear level and the threshold: neither raises nor clears
                    state.under = 0
                if state.active and state.under >= h.clear_after:
                    state.active = False
                    changes.append(Change(check, False, value, limit, wedding_day, now))
        return changes

    def active(self) -> dict[str, dict[str, Any]]:
        """The active alerts, as stored."""
        return {
            check: {
                "check": check,
                "since": s.since,
                "value": s.value,
                "worst": s.worst,
                "threshold": s.threshold,
                "wedding_day": self.wedding_day,
            }
            for check, s in self.states.items()
            if s.active
        }


def _p99(prev: Mapping[str, Scrape], cur: Mapping[str, Scrape], name: str) -> float | None:
    """The p99 of histogram ``name`` over the observations every target made since its previous
    scrape (a target without one adds nothing: its counts since start are not this interval's)."""
    combined: dict[float, float] = {}
    for target, scrape in cur.items():
        if target not in prev:
            continue
        for le, n in window(prev[target], scrape, name).items():
            combined[le] = combined.get(le, 0.0) + n
    return quantile(0.99, combined)


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def measure(
    prev: Mapping[str, Scrape], cur: Mapping[str, Scrape | None], earlier: Mapping[str, Scrape] | None = None
) -> dict[str, float | None]:
    """Each check's value over the interval between two rounds of scrapes (by target; None for
    a target that did not answer); the overhead since ``earlier`` (default ``prev``)."""
    base = prev if earlier is None else earlier
    live = {target: scrape for target, scrape in cur.items() if scrape is not None}
    return {
        "event_processing": _p99(prev, live, "auditmesh_ingest_handling_seconds"),
        "storage_write": _max(
            [
                _p99(prev, live, "auditmesh_processor_write_seconds"),
                _max(s.maximum("auditmesh_processor_write_oldest_seconds") for s in live.values()),
            ]
        ),
        "alert_delivery": _p99(prev, live, "auditmesh_alert_delivery_seconds"),
        "system_overhead": _max(
            rate(base.get(t), s, "auditmesh_telemetry_seconds_total") for t, s in live.items() if t in base
        ),
        "metrics_unreachable": float(len(cur) - len(live)),
    }


class AlertBoard:
    """The alerts as stored in Redis. A failed write is made good by the next one that succeeds
    (it rewrites the active set and adds the history it missed)."""

    def __init__(self, client: aioredis.Redis | None, prefix: str = "am:perf") -> None:
        self._client = client
        self.prefix = prefix
        self._history: list[str] = []
        self._dirty = True
        self.failures = 0

    async def publish(self, changes: list[Change], active: Mapping[str, Mapping[str, Any]], checked: Any) -> None:
        self._history.extend(json.dumps(c.as_dict()) for c in changes)
        if changes:
            self._dirty = True
        if self._client is None:
            return
        try:
            p = self.prefix
            async with self._client.pipeline(transaction=True) as pipe:
                if self._dirty:
                    pipe.delete(f"{p}:alerts")
                    if active:
                        pipe.hset(f"{p}:alerts", mapping={k: json.dumps(v) for k, v in active.items()})
                if self._history:
                    pipe.lpush(f"{p}:history", *self._history)
                    pipe.ltrim(f"{p}:history", 0, _HISTORY - 1)
                pipe.set(f"{p}:checked", json.dumps(checked), ex=30)
                await pipe.execute()
            self._dirty = False
            self._history = []
        except (RedisError, OSError) as exc:
            self.failures += 1
            self._dirty = True
            self._history = self._history[-_HISTORY:]
            log.warning("performance alerts not stored (%s); retrying next check", exc)


def read_alerts(
    url: str, prefix: str = "am:perf", timeout_s: float = 1.0
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The active performance alerts and the last check, as ``auditmesh status`` shows them."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        raw = client.hgetall(f"{prefix}:alerts")
        checked = client.get(f"{prefix}:checked")
    finally:
        client.close()
    alerts = sorted((json.loads(v) for v in raw.values()), key=lambda a: str(a["check"]))
    return alerts, json.loads(checked) if checked else None


@dataclass
class _Calendar:
    """Whether a wedding of the calendar is today, re-read every ``interval_s``."""

    load: Callable[[], Awaitable[list[CalendarEntry]]]
    entries: list[CalendarEntry] = field(default_factory=list)
    today: bool = False

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                self.entries = await asyncio.wait_for(self.load(), max(interval_s, 5.0))
            except Exception as exc:  # keep the last calendar: a store hiccup must not stop the checks
                log.warning("wedding calendar not refreshed, keeping %d entries: %s", len(self.entries), exc)
            self.today = bool(snapshot_calendar(self.entries, dt.datetime.now(dt.UTC)).today)
            await asyncio.sleep(interval_s)


class PerformanceMonitor:
    """Scrapes ``targets`` (name -> host:port of a metrics endpoint) every ``interval_s``,
    updates the checks and publishes what changed."""

    def __init__(
        self,
        targets: Mapping[str, str],
        checks: Checks,
        board: AlertBoard,
        calendar: Callable[[], Awaitable[list[CalendarEntry]]],
        *,
        interval_s: float = 1.0,
        scrape_timeout_s: float = 0.5,
        calendar_refresh_s: float = 30.0,
    ) -> None:
        self.targets = dict(targets)
        self.checks = checks
        self.board = board
        self._calendar = _Calendar(calendar)
        self.interval_s = interval_s
        self.scrape_timeout_s = scrape_timeout_s
        self.calendar_refresh_s = calendar_refresh_s
        self.rounds = 0
        self.scrape_failures = dict.fromkeys(self.targets, 0)
        self._last: dict[str, Scrape] = {}
        # Each target's scrapes of the last OVERHEAD_WINDOW_S, oldest first.
        self._recent: dict[str, deque[Scrape]] = {t: deque() for t in self.targets}
        self._answered: set[str] = set()
        self._started = time.monotonic()

    async def _scrape(self, target: str) -> Scrape | None:
        try:
            return await asyncio.to_thread(fetch, self.targets[target], self.scrape_timeout_s)
        except (OSError, ValueError):
            self.scrape_failures[target] += 1
            return None

    async def check_once(self) -> list[Change]:
        names = list(self.targets)
        scrapes = dict(zip(names, await asyncio.gather(*(self._scrape(n) for n in names)), strict=True))
        earlier: dict[str, Scrape] = {}
        for name, scrape in scrapes.items():
            recent = self._recent[name]
            if scrape is not None:
                recent.append(scrape)
                self._answered.add(name)
            while len(recent) > 1 and recent[-1].at - recent[1].at >= OVERHEAD_WINDOW_S:
                recent.popleft()
            if scrape is not None and recent[-1].at - recent[0].at >= OVERHEAD_WINDOW_S / 2:
                earlier[name] = recent[0]
        values = measure(self._last, scrapes, earlier)
        if time.monotonic() - self._started < STARTUP_S:
            starting = sum(1 for n, s in scrapes.items() if s is None and n not in self._answered)
            values["metrics_unreachable"] = (values["metrics_unreachable"] or 0.0) - starting
        self._last = {n: s for n, s in scrapes.items() if s is not None}
        wedding_day = self._calendar.today
        now = time.time()
        changes = self.checks.update(values, wedding_day, now)
        for change in changes:
            shown = "-" if change.value is None else f"{change.value:.6g}"
            level = logging.WARNING if change.raised else logging.INFO
            log.log(
                level,
                "%s %s: %s against %.6g",
                change.check,
                "raised" if change.raised else "cleared",
                shown,
                change.threshold,
            )
        self.rounds += 1
        checked = {"at": now, "wedding_day": wedding_day, "values": values}
        await self.board.publish(changes, self.checks.active(), checked)
        return changes

    async def run(self) -> None:
        refresher = asyncio.create_task(self._calendar.run(self.calendar_refresh_s))
        try:
            next_at = time.monotonic()
            while True:
                await self.check_once()
                next_at += self.interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - self.interval_s)
        finally:
            refresher.cancel()

    def metrics(self) -> Iterator[str]:
        states = self.checks.states
        yield counter("auditmesh_monitor_checks_total", "Rounds of checks done.", self.rounds)
        yield gauge(
            "auditmesh_monitor_wedding_day",
            "1 while a wedding of the calendar is today.",
            float(self.checks.wedding_day),
        )
        yield gauge(
            "auditmesh_monitor_value",
            "Each check's value in the last interval (seconds; a ratio for system_overhead; a count "
            "for metrics_unreachable); NaN when there was nothing to measure.",
            {(c,): float("nan") if s.value is None else s.value for c, s in states.items()},
            ["check"],
        )
        yield gauge(
            "auditmesh_monitor_threshold",
            "Each check's threshold now (stricter on a wedding day).",
            {(c,): s.threshold for c, s in states.items()},
            ["check"],
        )
        yield gauge(
            "auditmesh_monitor_alert_active",
            "1 while a check's performance alert is raised.",
            {(c,): float(s.active) for c, s in states.items()},
            ["check"],
        )
        yield counter(
            "auditmesh_monitor_alerts_raised_total",
            "Performance alerts raised, by check.",
            {(c,): s.raised for c, s in states.items()},
            ["check"],
        )
        yield counter(
            "auditmesh_monitor_scrape_failures_total",
            "Scrapes of a service's metrics endpoint that failed.",
            {(t,): n for t, n in self.scrape_failures.items()},
            ["target"],
        )
        yield counter(
            "auditmesh_monitor_store_failures_total", "Alert writes to Redis that failed.", self.board.failures
        )
