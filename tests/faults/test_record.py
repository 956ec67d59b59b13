"""The faults record behind the README table holds what was measured, marks each fault by the
outcome of its test, and a record from a failing or partial run is never rendered."""

from __future__ import annotations

import pytest

from auditmesh.client import ClientStats
from bench.report import faults_unfit, render_faults
from tests.faults.conftest import FaultRecord, SteadyLoad

TEST = "tests/faults/test_faults.py::test_example"


def _report(when: str, outcome: str, nodeid: str = TEST) -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("test_faults.py", 1, "test_example"), {}, outcome, None, when)  # type: ignore[arg-type]


def _recorded(record: FaultRecord, *, duplicates: int = 3, found: int = 997) -> None:
    load = SteadyLoad("127.0.0.1:1", rate=1500.0)
    load.started, load.stopped = 100.0, 104.0
    load.logged = {"w": [f"e{i}" for i in range(1000)]}
    load.peak_rss = {"ingest": 70 * 2**20, "processor-0": 90 * 2**20}
    stats = ClientStats(logged=1000, acked=999, rejected=1, resent=42, dropped=0, pending=0, reconnects=2)
    record.add("kill -9 something", TEST, load, stats, found, duplicates, 1.234)


def test_an_entry_holds_the_measured_values() -> None:
    """Duplicates, found, rate, recovery and RSS are the values measured, not constants."""
    record = FaultRecord()
    _recorded(record, duplicates=3, found=997)
    _recorded(record, duplicates=0, found=1000)
    first, second = record.entries
    assert (first["duplicates"], first["found"]) == (3, 997)
    assert (second["duplicates"], second["found"]) == (0, 1000)
    assert first["logged_eps"] == 250.0  # 1,000 events over 4 s, not the 1,500 ev/s asked for
    assert (first["acked"], first["resent"], first["recovery_s"], first["peak_rss_mb"]) == (999, 42, 1.23, 90.0)
    assert first["passed"] is None  # not yet known: its test has not finished


@pytest.mark.parametrize(
    ("reports", "passed"),
    [
        ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], True),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "passed")], False),
        ([("setup", "passed"), ("call", "passed"), ("teardown", "failed")], False),
    ],
)
def test_an_entry_is_marked_by_the_outcome_of_its_whole_test(reports: list[tuple[str, str]], passed: bool) -> None:
    """An assertion that fails after ``record`` (or in teardown) marks the recorded fault failed."""
    record = FaultRecord()
    _recorded(record)
    for when, outcome in reports:
        record.outcome(_report(when, outcome))
    assert record.entries[0]["passed"] is passed
    doc = record.document([TEST], exit_status=0 if passed else 1, tests_failed=0 if passed else 1)
    assert doc["passed"] is passed and doc["complete"] is True
    assert (faults_unfit(doc) == "") is passed


def test_a_test_that_failed_before_recording_gets_a_failed_entry() -> None:
    """A fault test that failed before it measured anything still shows up, as failed."""
    record = FaultRecord()
    _recorded(record)
    record.outcome(_report("call", "passed"))
    other = "tests/faults/test_faults.py::test_other"
    record.outcome(_report("call", "failed", other))
    assert [(e["test"], e["passed"]) for e in record.entries] == [(TEST, True), (other, False)]
    # Even if the exit status were lost, the failed entry keeps the record from being rendered.
    doc = record.document([TEST, other], exit_status=0, tests_failed=0)
    assert doc["passed"] is False
    assert "did not pass" in faults_unfit(doc)


def test_only_a_complete_passing_run_is_rendered() -> None:
    """The README table is rendered only from a run that passed and ran every fault test."""
    record = FaultRecord()
    _recorded(record)
    record.outcome(_report("call", "passed"))
    good = record.document([TEST], exit_status=0, tests_failed=0)
    assert faults_unfit(good) == ""
    assert "| kill -9 something | 250 ev/s | 999 | 997 | 3 | 42 | 1.23 s | - | 90.0 MB |" in render_faults(good)

    partial = record.document([TEST, "tests/faults/test_faults.py::test_skipped"], exit_status=0, tests_failed=0)
    assert partial["complete"] is False and "not run" in faults_unfit(partial)
    record.not_selected.append("tests/faults/test_faults.py::test_deselected")
    assert "test_deselected" in faults_unfit(record.document([TEST], exit_status=0, tests_failed=0))

    failed_elsewhere = FaultRecord()
    _recorded(failed_elsewhere)
    failed_elsewhere.outcome(_report("call", "passed"))
    assert "did not pass" in faults_unfit(failed_elsewhere.document([TEST], exit_status=1, tests_failed=1))
    assert faults_unfit({"run": "old", "faults": good["faults"]}) != ""  # a record that does not say it passed
