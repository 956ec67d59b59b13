"""``auditmesh top``: a live terminal view of the mesh, refreshed from the services' metrics
endpoints every second (in the spirit of ``vector top``). Plain curses, so it works over SSH;
``q`` quits.

One row per service and lane: events per second, the queue in front of it, the p99 of its
stage in the last interval against the stage's budget (green within, red over), the cache hit
rate, errors per second. Below the rows: the performance monitor's active alerts.
"""

from __future__ import annotations

import curses
import datetime as dt
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from auditmesh.telemetry.scrape import Scrape, fetch, quantile, rate, window

__all__ = ["BUDGETS", "Endpoint", "Row", "View", "alerts", "rows", "run"]

BUDGETS = {"handling": 0.0005, "write": 0.005, "read": 0.010, "deliver": 0.100}
"""The latency budget of each stage shown (seconds): ingest handling 500 us, storage write
5 ms, query 10 ms, alert delivery (ingest to a SubscribeAlerts caller) 100 ms."""
_INGEST_LANES = ("critical", "wedding_day", "normal")
_WRITE_LANES = ("critical", "bulk")


@dataclass(frozen=True)
class Endpoint:
    """A service of the mesh: its name, its gRPC target (processors are known to ingest by it)
    and its metrics endpoint."""

    name: str
    target: str
    metrics: str


@dataclass(frozen=True)
class Row:
    service: str
    lane: str
    rate: float | None = None
    queue: float | None = None
    stage: str = ""
    p99: float | None = None
    budget: float | None = None
    hit_rate: float | None = None
    errors: float | None = None
    down: bool = False

    @property
    def over_budget(self) -> bool | None:
        if self.p99 is None or self.budget is None:
            return None
        return self.p99 > self.budget


def _errors(prev: Scrape | None, cur: Scrape, *names: str, **labels: str) -> float | None:
    found = [rate(prev, cur, name, **labels) for name in names]
    present = [v for v in found if v is not None]
    return sum(present) if present else None


def _p99(prev: Scrape | None, cur: Scrape, name: str, **labels: str) -> float | None:
    return quantile(0.99, window(prev, cur, name, **labels)) if prev is not None else None


def rows(endpoints: list[Endpoint], prev: Mapping[str, Scrape], cur: Mapping[str, Scrape | None]) -> list[Row]:
    """The rows of one refresh, from this round of scrapes and the one before."""
    out: list[Row] = []
    ingest = next((cur.get(e.name) for e in endpoints if e.name == "ingest"), None)
    for ep in endpoints:
        scrape, before = cur.get(ep.name), prev.get(ep.name)
        if scrape is None:
            out.append(Row(ep.name, "-", down=True))
            continue
        if "auditmesh_ingest_batches_total" in scrape.samples:
            for lane in _INGEST_LANES:
                out.append(
                    Row(
                        ep.name,
                        lane,
                        rate(before, scrape, "auditmesh_ingest_events_out_total", lane=lane),
                        scrape.total("auditmesh_ingest_in_flight_events", lane=lane),
                        "handling",
                        _p99(before, scrape, "auditmesh_ingest_handling_seconds", lane=lane),
                        BUDGETS["handling"],
                        None,
                        _errors(before, scrape, "auditmesh_ingest_events_failed_total", lane=lane),
                    )
                )
        elif "auditmesh_processor_events_written_total" in scrape.samples:
            for lane in _WRITE_LANES:
                link = "critical" if lane == "critical" else "bulk"
                queue = (
                    ingest.total("auditmesh_ingest_link_in_flight_events", processor=ep.target, link=link)
                    if ingest
                    else None
                )
                out.append(
                    Row(
                        ep.name,
                        lane,
                        rate(before, scrape, "auditmesh_processor_write_events_total", lane=lane),
                        queue,
                        "write",
                        _p99(before, scrape, "auditmesh_processor_write_seconds", lane=lane),
                        BUDGETS["write"],
                        None,
                        _errors(before, scrape, "auditmesh_processor_write_errors_total", lane=lane),
                    )
                )
        elif "auditmesh_query_cache_hits_total" in scrape.samples:
            hits = rate(before, scrape, "auditmesh_query_cache_hits_total")
            misses = rate(before, scrape, "auditmesh_query_cache_misses_total")
            pages = None if hits is None or misses is None else hits + misses
            out.append(
                Row(
                    ep.name,
                    "-",
                    pages,
                    scrape.total("auditmesh_query_store_reads_in_flight"),
                    "read",
                    _p99(before, scrape, "auditmesh_query_store_read_seconds"),
                    BUDGETS["read"],
                    None if not pages or hits is None else hits / pages,
                    _errors(before, scrape, "auditmesh_query_cache_errors_total", "auditmesh_query_store_errors_total"),
                )
            )
            if "auditmesh_alert_feed_received_total" in scrape.samples:
                # The live alert feed: alerts received a second, callers on it, delivery p99.
                out.append(
                    Row(
                        ep.name,
                        "alerts",
                        rate(before, scrape, "auditmesh_alert_feed_received_total"),
                        scrape.total("auditmesh_alert_feed_subscribers"),
                        "deliver",
                        _p99(before, scrape, "auditmesh_alert_delivery_seconds"),
                        BUDGETS["deliver"],
                        None,
                        _errors(before, scrape, "auditmesh_alert_feed_dropped_total"),
                    )
                )
        elif "auditmesh_monitor_checks_total" in scrape.samples:
            active = scrape.total("auditmesh_monitor_alert_active")
            out.append(Row(ep.name, "-", rate(before, scrape, "auditmesh_monitor_checks_total"), active, "alerts"))
        else:
            out.append(Row(ep.name, "-"))
    return out


def alerts(cur: Mapping[str, Scrape | None]) -> tuple[list[str], bool | None]:
    """The monitor's active alerts as lines, and whether it is a wedding day (None without a monitor)."""
    monitor = next((s for s in cur.values() if s is not None and "auditmesh_monitor_checks_total" in s.samples), None)
    if monitor is None:
        return [], None
    thresholds = {ls["check"]: v for ls, v in monitor.series("auditmesh_monitor_threshold")}
    values = {ls["check"]: v for ls, v in monitor.series("auditmesh_monitor_value")}
    lines = []
    for ls, active in monitor.series("auditmesh_monitor_alert_active"):
        if active:
            check = ls["check"]
            lines.append(
                f"ALERT {check}: now {_amount(check, values.get(check))}, "
                f"threshold {_amount(check, thresholds.get(check))}"
            )
    return lines, bool(monitor.total("auditmesh_monitor_wedding_day"))


def _amount(check: str, value: float | None) -> str:
    if value is None or value != value:  # NaN: nothing measured
        return "-"
    if check == "system_overhead":
        return f"{value * 100:.3f}%"
    if check == "metrics_unreachable":
        return f"{value:.0f}"
    return _seconds(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def _number(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


HEADER = (
    f"{'SERVICE':<13}{'LANE':<12}{'EVENTS/S':>10}{'QUEUE':>9}  {'STAGE':<9}"
    f"{'P99':>9}{'BUDGET':>9}{'HIT%':>7}{'ERRORS/S':>10}"
)


def format_row(row: Row) -> str:
    if row.down:
        return f"{row.service:<13}{'DOWN: metrics endpoint not answering'}"
    hit = "-" if row.hit_rate is None else f"{row.hit_rate * 100:.0f}"
    return (
        f"{row.service:<13}{row.lane:<12}{_number(row.rate):>10}{_number(row.queue):>9}  {row.stage:<9}"
        f"{_seconds(row.p99):>9}{_seconds(row.budget):>9}{hit:>7}{_number(row.errors, '{:,.1f}'):>10}"
    )


@dataclass
class View:
    """What the screen shows; refreshed by :meth:`refresh`."""

    endpoints: list[Endpoint]
    timeout_s: float = 0.8

    def __post_init__(self) -> None:
        self.prev: dict[str, Scrape] = {}
        self.rows: list[Row] = []
        self.alerts: list[str] = []
        self.wedding_day: bool | None = None
        self.refreshed = ""
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.endpoints)))

    def _fetch(self, ep: Endpoint) -> Scrape | None:
        try:
            return fetch(ep.metrics, self.timeout_s)
        except (OSError, ValueError):
            return None

    def refresh(self) -> None:
        scrapes = dict(zip([e.name for e in self.endpoints], self._pool.map(self._fetch, self.endpoints), strict=True))
        self.rows = rows(self.endpoints, self.prev, scrapes)
        self.alerts, self.wedding_day = alerts(scrapes)
        self.prev = {name: s for name, s in scrapes.items() if s is not None}
        self.refreshed = dt.datetime.now().strftime("%H:%M:%S")

    def close(self) -> None:
        self._pool.shutdown(wait=False)


_GREEN, _RED, _TITLE = 1, 2, 3


def _draw(screen: curses.window, view: View, title: str) -> None:
    screen.erase()
    height, width = screen.getmaxyx()

    def put(y: int, text: str, attr: int = 0) -> None:
        if y < height:
            try:
                screen.addnstr(y, 0, text, max(0, width - 1), attr)
            except curses.error:
                pass

    day = {None: "", True: "  wedding day: stricter thresholds", False: ""}[view.wedding_day]
    put(0, f"{title}  {view.refreshed}{day}   q quits", curses.color_pair(_TITLE) | curses.A_BOLD)
    put(2, HEADER, curses.A_REVERSE)
    y = 3
    for row in view.rows:
        over = row.over_budget
        attr = curses.color_pair(_RED) if row.down or over else curses.color_pair(_GREEN) if over is False else 0
        put(y, format_row(row), attr)
        y += 1
    y += 1
    if view.alerts:
        for line in view.alerts:
            put(y, line, curses.color_pair(_RED) | curses.A_BOLD)
            y += 1
    else:
        put(y, "no performance alert" if view.wedding_day is not None else "no performance monitor answering")


def _loop(screen: curses.window, view: View, title: str, interval_s: float) -> None:
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    if curses.has_colors():
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        curses.init_pair(_GREEN, curses.COLOR_GREEN, background)
        curses.init_pair(_RED, curses.COLOR_RED, background)
        curses.init_pair(_TITLE, curses.COLOR_CYAN, background)
    screen.timeout(100)
    next_at = 0.0
    while True:
        if time.monotonic() >= next_at:
            next_at = time.monotonic() + interval_s
            view.refresh()
            _draw(screen, view, title)
            screen.refresh()
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            _draw(screen, view, title)


def run(endpoints: list[Endpoint], title: str, interval_s: float = 1.0) -> int:
    """Show the view until ``q``; the exit status."""
    view = View(endpoints)
    try:
        curses.wrapper(_loop, view, title, interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
    return 0
