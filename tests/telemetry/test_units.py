"""Pure units of the telemetry: reservoir histogram buckets, bucket quantiles and rates, and the
monitor's thresholds and hysteresis."""

from __future__ import annotations

import pytest

from auditmesh.metrics import Reservoir
from auditmesh.telemetry.monitor import Checks, Hysteresis, Thresholds
from auditmesh.telemetry.scrape import Scrape, parse, quantile, rate, window


def test_reservoir_buckets_are_cumulative_with_sum_and_survive_reset() -> None:
    """Each value lands in the first bucket whose bound is at least the value, counts are
    cumulative up to +Inf, the sum is kept, and reset() clears the sample but not the buckets."""
    r = Reservoir(10, bounds=(10, 100, 1000))
    for v in (5, 10, 11, 100, 5000):
        r.add(v)
    assert r.histogram() == ([2, 4, 4, 5], 5126)
    r.reset()
    assert r.values == [] and r.count == 0
    r.add(50)
    assert r.histogram() == ([2, 5, 5, 6], 5176)


def test_quantile_interpolates_within_a_bucket_like_prometheus() -> None:
    """The p50 of 10 observations under 1 and 10 between 1 and 2 is at 1; the p75 half-way into
    the second bucket; one in +Inf answers the largest finite bound; no observation is None."""
    buckets = {1.0: 10.0, 2.0: 20.0, float("inf"): 20.0}
    assert quantile(0.5, buckets) == pytest.approx(1.0)
    assert quantile(0.75, buckets) == pytest.approx(1.5)
    assert quantile(0.99, {1.0: 0.0, 2.0: 0.0, float("inf"): 5.0}) == 2.0
    assert quantile(0.99, {1.0: 0.0, float("inf"): 0.0}) is None


def _scrape(at: float, lag_le_1ms: float, lag_total: float, writes: float) -> Scrape:
    text = (
        "# TYPE x_seconds histogram\n"
        f'x_seconds_bucket{{le="0.001"}} {lag_le_1ms}\n'
        f'x_seconds_bucket{{le="+Inf"}} {lag_total}\n'
        f"x_seconds_count {lag_total}\n"
        "x_seconds_sum 0\n"
        "# TYPE w counter\n"
        f"w_total {writes}\n"
    )
    return parse("t", text, at=at)


def test_window_and_rate_see_only_what_happened_between_two_scrapes() -> None:
    """The window holds the observations made between two scrapes (all of them after a restart),
    and a counter's rate is its increase over the elapsed time."""
    first, second = _scrape(0.0, 100, 100, 50), _scrape(2.0, 100, 150, 250)
    assert window(first, second, "x_seconds") == {0.001: 0.0, float("inf"): 50.0}
    assert quantile(0.99, window(first, second, "x_seconds")) == 0.001
    assert rate(first, second, "w_total") == 100.0
    restarted = _scrape(3.0, 1, 1, 10)
    assert window(second, restarted, "x_seconds") == {0.001: 1.0, float("inf"): 1.0}
    assert rate(second, restarted, "w_total") == 10.0


def test_wedding_day_makes_the_latency_thresholds_stricter() -> None:
    """On a wedding day the latency thresholds are scaled by the factor; overhead stays."""
    t = Thresholds(processing_s=0.001, write_s=0.005, alert_delivery_s=0.1, overhead=0.001, wedding_day_factor=0.5)
    normal, wedding = t.of(False), t.of(True)
    assert normal["storage_write"] == 0.005 and wedding["storage_write"] == 0.0025
    assert normal["event_processing"] == 0.001 and wedding["event_processing"] == 0.0005
    assert wedding["system_overhead"] == normal["system_overhead"] == 0.001


def test_alerts_raise_after_and_clear_with_hysteresis() -> None:
    """An alert is raised after raise_after intervals over the threshold, is not cleared by values
    between the clear level and the threshold, and clears after clear_after intervals under it."""
    checks = Checks(Thresholds(write_s=0.010), Hysteresis(raise_after=2, clear_after=3, clear_ratio=0.5))

    def step(write: float | None) -> list[tuple[str, bool]]:
        return [(c.check, c.raised) for c in checks.update({"storage_write": write}, False, 0.0)]

    assert step(0.020) == []
    assert step(0.020) == [("storage_write", True)]
    assert "storage_write" in checks.active()
    for _ in range(10):
        assert step(0.008) == []  # under the threshold, over the clear level: stays raised
    assert step(0.001) == [] and step(None) == []
    assert step(0.004) == [("storage_write", False)]
    assert checks.active() == {}
    assert checks.states["storage_write"].raised == 1
