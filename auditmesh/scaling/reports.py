"""Load reports: what ingest and the processors stream to the scaler once a second, and the
scaler's sliding window over them.

Sending is best effort: :class:`Reporter` runs beside the service, builds a report from
counters the service keeps anyway, and when the scaler is down it waits and reconnects.
Nothing on the event path waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from auditmesh.metrics import Reservoir
from auditmesh.scaling.policy import Signals
from auditmesh.telemetry.instruments import LANES, LaneWatch, WriteWatch
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc

__all__ = [
    "IngestReports",
    "ProcessorReports",
    "ReportWindow",
    "Reporter",
    "window_quantile",
]

log = logging.getLogger("auditmesh.scaling")
_jitter = random.Random()
"""Backoff jitter from a generator of this module's own: an application's (or a test's)
use of the global ``random`` state is neither disturbed nor seen."""


def window_quantile(bounds: Sequence[int], before: Sequence[int], after: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of the values a :class:`Reservoir` got between two of its
    cumulative histograms, as the upper bound of the bucket it falls in; None when none came."""
    counts = [a - b for a, b in zip(after, before, strict=True)]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    wanted = q * total
    for i, cumulative in enumerate(counts):
        if cumulative >= wanted:
            return float(bounds[i] if i < len(bounds) else bounds[-1] * 2)
    return float(bounds[-1] * 2)


class _Window:
    """Deltas of one reservoir's histogram between calls."""

    def __init__(self, reservoir: Reservoir) -> None:
        self._reservoir = reservoir
        self._last = reservoir.histogram()[0]

    def take(self, stage: str) -> spb.StageLatency:
        now = self._reservoir.histogram()[0]
        bounds = self._reservoir.bounds
        p50 = window_quantile(bounds, self._last, now, 0.5)
        p99 = window_quantile(bounds, self._last, now, 0.99)
        count = now[-1] - self._last[-1]
        self._last = now
        return spb.StageLatency(stage=stage, p50_us=p50 or 0.0, p99_us=p99 or 0.0, count=count)


class _Process:
    """CPU (cores used since the last call) and resident memory of this process."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._at = time.monotonic()

    def take(self) -> tuple[float, int]:
        cpu, at = time.process_time(), time.monotonic()
        cores = (cpu - self._cpu) / max(at - self._at, 1e-6)
        self._cpu, self._at = cpu, at
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            rss = 0
        return cores, rss


class IngestReports:
    """Builds ingest's reports from its lane counters and in-flight budgets."""

    def __init__(self, instance: str, lanes: LaneWatch, accepted: Callable[[], int]):
        self.instance = instance
        self._lanes = lanes
        self._accepted = accepted
        self._counts = {lane: (c.events_in, c.events_out, c.events_failed) for lane, c in lanes.lanes.items()}
        self._handling = {lane: _Window(c.handling_us) for lane, c in lanes.lanes.items()}
        self._transit = {lane: _Window(c.forward_us) for lane, c in lanes.lanes.items()}
        self._process = _Process()
        self._at = time.monotonic()

    def build(self) -> spb.LoadReport:
        now = time.monotonic()
        interval = max(now - self._at, 1e-3)
        self._at = now
        report = spb.LoadReport(service="ingest", instance=self.instance, sent_at_us=time.time_ns() // 1000)
        report.interval_s = interval
        failed = 0
        handling: list[spb.StageLatency] = []
        transit: list[spb.StageLatency] = []
        for lane, counts in self._lanes.lanes.items():
            before = self._counts[lane]
            current = (counts.events_in, counts.events_out, counts.events_failed)
            self._counts[lane] = current
            failed += current[2] - before[2]
            report.lanes.append(
                spb.LaneLoad(
                    lane=LANES[lane],
                    events_in_per_s=(current[0] - before[0]) / interval,
                    events_out_per_s=(current[1] - before[1]) / interval,
                    queue_depth=len(counts.in_flight),
                    in_flight_events=max(counts.in_flight_events, 0),
                )
            )
            handling.append(self._handling[lane].take(f"ingest_handling:{LANES[lane]}"))
            transit.append(self._transit[lane].take(f"transit:{LANES[lane]}"))
        report.latencies.extend([*handling, *transit])
        report.write_errors = failed
        report.cpu_cores, report.rss_bytes = self._process.take()
        report.events_total = self._accepted()
        return report


class _ServicerCounts(Protocol):
    written: int
    failed: int
    write_us: Reservoir
    critical_write_us: Reservoir


class ProcessorReports:
    """Builds a processor's reports from its servicer's counters and its store's write counts."""

    def __init__(
        self,
        instance: str,
        servicer: _ServicerCounts,
        writes: WriteWatch,
        detection: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """``detection``: the detector's stats (its ``queue_events`` and ``webhook_latency_ms``)."""
        self.instance = instance
        self._detection = detection
        self._servicer = servicer
        self._writes = writes
        self._written = servicer.written
        self._errors = sum(c.errors for c in writes.lanes.values())
        self._events = {name: c.events for name, c in writes.lanes.items()}
        self._bulk = _Window(servicer.write_us)
        self._critical = _Window(servicer.critical_write_us)
        self._process = _Process()
        self._at = time.monotonic()

    def build(self) -> spb.LoadReport:
        now = time.monotonic()
        interval = max(now - self._at, 1e-3)
        self._at = now
        report = spb.LoadReport(service="processor", instance=self.instance, sent_at_us=time.time_ns() // 1000)
        report.interval_s = interval
        for name, counts in self._writes.lanes.items():
            events = counts.events - self._events[name]
            self._events[name] = counts.events
            report.lanes.append(
                spb.LaneLoad(lane=name, events_in_per_s=events / interval, queue_depth=len(counts.in_flight))
            )
        written = self._servicer.written
        report.lanes.append(spb.LaneLoad(lane="written", events_out_per_s=(written - self._written) / interval))
        self._written = written
        errors = sum(c.errors for c in self._writes.lanes.values())
        report.write_errors = errors - self._errors
        self._errors = errors
        report.latencies.extend([self._bulk.take("write:bulk"), self._critical.take("write:critical")])
        report.cpu_cores, report.rss_bytes = self._process.take()
        report.events_total = written
        if self._detection is not None:
            stats = self._detection()
            report.detection_queue_events = int(stats.get("queue_events") or 0)
            report.alert_delivery_p99_ms = float((stats.get("webhook_latency_ms") or {}).get("p99") or 0.0)
        return report


class Reporter:
    """Streams ``build()`` to the scaler at ``target`` every ``interval_s``, reconnecting with
    backoff for as long as it runs. A failure is logged once per outage."""

    def __init__(
        self,
        target: str,
        build: Callable[[], spb.LoadReport],
        interval_s: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: the reporting service's own certificate in secure mode (the scaler
        accepts only clients with a certificate of the mesh's CA)."""
        self.target = target
        self._credentials = credentials
        self._build = build
        self._interval_s = interval_s
        self.sent = 0

    async def _reports(self) -> AsyncIterator[spb.LoadReport]:
        while True:
            await asyncio.sleep(self._interval_s)
            yield self._build()
            self.sent += 1

    async def run(self) -> None:
        backoff = 0.5
        down = False
        while True:
            sent = self.sent
            channel = (
                grpc.aio.insecure_channel(self.target)
                if self._credentials is None
                else grpc.aio.secure_channel(self.target, self._credentials)
            )
            async with channel:
                try:
                    await spb_grpc.ScalerServiceStub(channel).Report(self._reports())
                except grpc.RpcError as exc:
                    if self.sent > sent:  # it was up: a new outage
                        down, backoff = False, 0.5
                    if not down:
                        log.info("scaler %s not reachable, reports paused: %s", self.target, exc.code().name)
                    down = True
                else:
                    down = False
            await asyncio.sleep(backoff * _jitter.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 5.0)


@dataclass
class _Seen:
    report: spb.LoadReport
    at: float


class ReportWindow:
    """The last ``window_s`` of reports of every instance, summarised as policy signals."""

    def __init__(self, window_s: float = 10.0, recent_s: float = 3.0) -> None:
        self.window_s = window_s
        self.recent_s = recent_s
        self._reports: dict[str, deque[_Seen]] = {}
        self.received = 0

    def add(self, report: spb.LoadReport, now: float) -> None:
        key = f"{report.service}/{report.instance}"
        seen = self._reports.setdefault(key, deque())
        seen.append(_Seen(report, now))
        self.received += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        for key in list(self._reports):
            seen = self._reports[key]
            while seen and now - seen[0].at > self.window_s:
                seen.popleft()
            if not seen:
                del self._reports[key]

    def latest(self, now: float) -> Mapping[str, tuple[spb.LoadReport, float]]:
        """The newest report of every instance that reported in the window, with its age."""
        self._trim(now)
        return {key: (seen[-1].report, now - seen[-1].at) for key, seen in self._reports.items()}

    def signals(self, now: float, queue_min_events: int = 1000) -> Signals:
        self._trim(now)
        events_in = 0.0
        processing: list[float] = []
        writes: list[float] = []
        depth = 0
        growing = False
        errors = 0
        detection_queue = 0
        delivery: list[float] = []
        for key, seen in self._reports.items():
            recent = [s.report for s in seen if now - s.at <= self.recent_s]
            if not recent:
                continue
            if key.startswith("ingest/"):
                events_in += sum(sum(lane.events_in_per_s for lane in r.lanes) for r in recent) / len(recent)
                processing += [
                    lat.p99_us for r in recent for lat in r.latencies if lat.stage.startswith("ingest_handling:")
                ]
                depths = [sum(lane.in_flight_events for lane in r.lanes) for r in recent]
                depth += depths[-1]
                rising = len(depths) >= 3 and all(b > a for a, b in zip(depths, depths[1:], strict=False))
                growing = growing or (rising and depths[-1] > queue_min_events)
            else:
                writes += [lat.p99_us for r in recent for lat in r.latencies if lat.stage.startswith("write:")]
                detection_queue += recent[-1].detection_queue_events
                delivery += [r.alert_delivery_p99_ms for r in recent if r.alert_delivery_p99_ms > 0]
            errors += sum(r.write_errors for r in recent)
        processing = [v for v in processing if v > 0]
        writes = [v for v in writes if v > 0]
        return Signals(
            events_in_per_s=events_in,
            processing_p99_ms=max(processing) / 1000 if processing else None,
            write_p99_ms=max(writes) / 1000 if writes else None,
            queue_depth=depth,
            queue_growing=growing,
            write_errors=errors,
            detection_queue_events=detection_queue,
            alert_delivery_p99_ms=max(delivery) if delivery else None,
        )
