"""The failover record behind the README faults table's "failover" column holds the measured
gaps, and a record from a failing run is never rendered."""

from __future__ import annotations

from typing import Any

from auditmesh.client import ClientStats
from bench.report import faults_unfit, render_faults
from tests.failover.conftest import FailoverRecord
from tests.faults.conftest import SteadyLoad
from tests.faults.test_record import _report

TEST = "tests/failover/test_failover.py::test_example"


def _recorded() -> FailoverRecord:
    load = SteadyLoad("127.0.0.1:1", rate=1000.0)
    load.started, load.stopped = 100.0, 102.0
    load.logged = {"w": [f"e{i}" for i in range(2000)]}
    stats = ClientStats(logged=2000, acked=2000, rejected=0, resent=7, dropped=0, pending=0, reconnects=1)
    record = FailoverRecord()
    record.add_gap("kill -9 one of two things", TEST, load, stats, 2000, 0, 0.4321, 1.2345)
    return record


def test_the_failover_column_shows_the_measured_gaps() -> None:
    """A failover row carries its own gap and slowest batch; rows of tests/faults get "-" there."""
    record = _recorded()
    record.outcome(_report("call", "passed", TEST))
    failover = record.document([TEST], exit_status=0, tests_failed=0)
    assert faults_unfit(failover) == ""
    plain: dict[str, Any] = {k: v for k, v in record.entries[0].items() if k not in ("failover_s", "slowest_p0_s")}
    table = render_faults({"run": "r", "faults": [{**plain, "fault": "plain"}]}, failover)
    row = "| kill -9 one of two things | 1,000 ev/s | 2,000 | 2,000 | 0 | 7 | n/a | 0.43 s (slowest P0 1.23 s) |"
    assert row in table
    assert "| plain | 1,000 ev/s | 2,000 | 2,000 | 0 | 7 | n/a | - |" in table
    assert "pytest tests/failover" in table


def test_a_failing_failover_run_is_not_rendered() -> None:
    """A failover test that failed marks the record unfit for the README."""
    record = _recorded()
    record.outcome(_report("call", "failed", TEST))
    assert "did not pass" in faults_unfit(record.document([TEST], exit_status=1, tests_failed=1))
