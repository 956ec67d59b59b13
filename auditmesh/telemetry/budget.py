"""The latency budget, checked from real spans: per stage count, p50/p95/p99 against its budget.

Stages and where they come from (span names are those of :mod:`auditmesh.telemetry.tracing`):

========================  ==============================================================  =========
stage                     measured as                                                     budget
========================  ==============================================================  =========
caller overhead           ``sdk.batch`` attribute ``auditmesh.log_max_us`` (slowest log())  1 ms
ingest handling           ``ingest.handle``: receipt to routed (validation, priority)       -
critical-lane handling    ``ingest.forward`` of the critical lane: ingest to write confirmed 500 us
transit                   ``processor.request`` start minus its ``ingest.forward`` start     -
storage write             ``store.write``                                                   5 ms
ack                       ``ingest.batch`` end minus its last ``ingest.forward`` end         -
query                     ``query.search``, ``query.get_event``                             10 ms
alert delivery            ``alert.deliver``                                                 100 ms
========================  ==============================================================  =========

Spans of the wedding-day lane (a wedding of the calendar is live) are held to budgets half as
long, shown in rows of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from auditmesh.telemetry.spans import SpanRecord

__all__ = ["STAGES", "Stage", "StageResult", "check", "render", "span_budget"]

WEDDING_DAY_FACTOR = 0.5
_LANE = "auditmesh.lane"


@dataclass(frozen=True)
class Stage:
    name: str
    budget_us: int | None


STAGES = [
    Stage("caller overhead", 1_000),
    Stage("ingest handling", None),
    Stage("critical-lane handling", 500),
    Stage("transit", None),
    Stage("storage write", 5_000),
    Stage("ack", None),
    Stage("query", 10_000),
    Stage("alert delivery", 100_000),
]
_DURATION_STAGES = {
    "ingest.handle": "ingest handling",
    "store.write": "storage write",
    "query.search": "query",
    "query.get_event": "query",
    "alert.deliver": "alert delivery",
}
"""Stages measured as the duration of one kind of span."""
_SPAN_BUDGETS = {"store.write": 5_000, "query.search": 10_000, "query.get_event": 10_000, "alert.deliver": 100_000}


def span_budget(span: SpanRecord) -> int | None:
    """The budget one span is held to in a waterfall, or None."""
    lane = span.attributes.get(_LANE)
    if span.name == "ingest.forward":
        return 500 if lane == "critical" else None
    budget = _SPAN_BUDGETS.get(span.name)
    if budget is not None and lane == "wedding_day":
        return int(budget * WEDDING_DAY_FACTOR)
    return budget


@dataclass
class StageResult:
    stage: str
    wedding_day: bool
    budget_us: int | None
    samples_us: list[int]

    def quantile(self, q: float) -> int | None:
        if not self.samples_us:
            return None
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def violated(self) -> bool:
        p99 = self.quantile(0.99)
        return self.budget_us is not None and p99 is not None and p99 > self.budget_us


def _measurements(spans: list[SpanRecord]) -> Iterable[tuple[str, bool, int]]:
    """(stage, wedding day, microseconds) for every measurement the spans hold."""
    by_id = {span.span_id: span for span in spans}
    forwards_of: dict[str, list[SpanRecord]] = {}
    for span in spans:
        if span.name == "ingest.forward":
            forwards_of.setdefault(span.parent_id, []).append(span)

    def wedding_day(span: SpanRecord) -> bool:
        return span.attributes.get(_LANE) == "wedding_day"

    for span in spans:
        if span.name in _DURATION_STAGES:
            yield _DURATION_STAGES[span.name], wedding_day(span), span.duration_us
        elif span.name == "sdk.batch" and "auditmesh.log_max_us" in span.attributes:
            yield "caller overhead", wedding_day(span), int(span.attributes["auditmesh.log_max_us"])
        elif span.name == "ingest.forward" and span.attributes.get(_LANE) == "critical":
            yield "critical-lane handling", False, span.duration_us
        elif span.name == "processor.request":
            parent = by_id.get(span.parent_id)
            if parent is not None and parent.name == "ingest.forward":
                yield "transit", wedding_day(span), max(0, span.start_us - parent.start_us)
        elif span.name == "ingest.batch" and span.span_id in forwards_of:
            last = max(forward.end_us for forward in forwards_of[span.span_id])
            yield "ack", wedding_day(span), max(0, span.end_us - last)


def check(spans: list[SpanRecord]) -> list[StageResult]:
    """Every stage (and its wedding-day row when such spans exist) with its samples."""
    samples: dict[tuple[str, bool], list[int]] = {}
    for name, wedding_day, value in _measurements(spans):
        samples.setdefault((name, wedding_day), []).append(value)
    results = []
    for stage in STAGES:
        results.append(StageResult(stage.name, False, stage.budget_us, samples.get((stage.name, False), [])))
        if (stage.name, True) in samples:
            budget = None if stage.budget_us is None else int(stage.budget_us * WEDDING_DAY_FACTOR)
            results.append(StageResult(stage.name, True, budget, samples[(stage.name, True)]))
    return results


def _us(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value} us"


def render(results: list[StageResult]) -> str:
    """The budget table; the last column is pass, FAIL, or - (no budget or no spans)."""
    rows = ["stage                          spans       p50       p95       p99    budget  result"]
    for result in results:
        label = result.stage + (" (wedding day)" if result.wedding_day else "")
        outcome = "-"
        if result.budget_us is not None and result.samples_us:
            outcome = "FAIL" if result.violated else "pass"
        rows.append(
            f"{label:<30} {len(result.samples_us):>5} {_us(result.quantile(0.5)):>9} {_us(result.quantile(0.95)):>9}"
            f" {_us(result.quantile(0.99)):>9} {_us(result.budget_us):>9}  {outcome}"
        )
    return "\n".join(rows)
