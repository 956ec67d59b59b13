"""Load reports as the scaler reads them (pure units): the windowed quantile of a reservoir's
histogram, and the policy signals a window of reports makes."""

from __future__ import annotations

from auditmesh.metrics import Reservoir
from auditmesh.scaling.reports import ReportWindow, window_quantile
from auditpb.v1 import scaler_pb2 as spb


def test_window_quantile_counts_only_what_came_between_two_histograms() -> None:
    """Values added before the first histogram do not count; the p99 of the interval is the
    upper bound of its bucket; an interval with nothing is None."""
    reservoir = Reservoir(bounds=(1_000, 10_000, 100_000))
    for _ in range(1000):
        reservoir.add(50_000)  # slow, but before the window
    before = reservoir.histogram()[0]
    assert window_quantile(reservoir.bounds, before, reservoir.histogram()[0], 0.99) is None
    for _ in range(99):
        reservoir.add(500)
    reservoir.add(5_000)
    after = reservoir.histogram()[0]
    assert window_quantile(reservoir.bounds, before, after, 0.5) == 1_000
    assert window_quantile(reservoir.bounds, before, after, 0.99) == 1_000
    assert window_quantile(reservoir.bounds, before, after, 1.0) == 10_000


def ingest_report(events_in: float, in_flight: int, handling_p99_us: float) -> spb.LoadReport:
    return spb.LoadReport(
        service="ingest",
        instance="ingest-a",
        lanes=[spb.LaneLoad(lane="normal", events_in_per_s=events_in, in_flight_events=in_flight)],
        latencies=[
            spb.StageLatency(stage="ingest_handling:normal", p99_us=handling_p99_us, count=10),
            spb.StageLatency(stage="transit:normal", p99_us=900_000, count=10),  # includes the write: not used
        ],
    )


def test_window_signals_sum_ingest_load_and_see_a_growing_queue() -> None:
    """Events/s are averaged over the recent reports of each ingest and summed over ingests; a
    queue counts as growing when in flight rose over three reports past the minimum; write p99
    comes from the processors and processing p99 from ingest's handling (not the round trip,
    which includes the write); reports older than the window are dropped."""
    window = ReportWindow(window_s=10, recent_s=3)
    for t, depth in enumerate((500, 1500, 2500)):
        window.add(ingest_report(300, depth, 20_000), float(t))
    second = ingest_report(100, 0, 80_000)
    second.instance = "ingest-b"
    window.add(second, 2.0)
    window.add(
        spb.LoadReport(
            service="processor",
            instance="p-0",
            latencies=[spb.StageLatency(stage="write:bulk", p99_us=12_000, count=5)],
            write_errors=2,
        ),
        2.0,
    )
    signals = window.signals(2.5, queue_min_events=1000)
    assert signals.events_in_per_s == 400
    assert signals.queue_depth == 2500 and signals.queue_growing
    assert signals.processing_p99_ms == 80 and signals.write_p99_ms == 12 and signals.write_errors == 2
    assert not window.signals(2.5, queue_min_events=3000).queue_growing
    assert window.signals(20.0).events_in_per_s == 0 and not window.latest(20.0)
