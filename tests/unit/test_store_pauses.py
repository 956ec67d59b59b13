"""bench.store_pauses reads the JVM's safepoint lines of a window: unit tests over a log file in the
JVM's own format, and one against the local Cassandra that deploy/local/infra.sh started."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from bench.report import cassandra_pid
from bench.store_pauses import gc_log_of, pauses_in


def _line(at: float, cause: str, total_ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"
    return (
        f'[{stamp}][725.583s][info][safepoint] Safepoint "{cause}", Time since last: 1000132399 ns,'
        f" Reaching safepoint: 17556 ns, At safepoint: 2734 ns, Total: {total_ns} ns"
    )


def test_counts_the_window_s_pauses_of_at_least_a_millisecond(tmp_path: Path) -> None:
    t = time.time() - 100.0  # the file, written now, is after the window starts
    log = tmp_path / "gc.log"
    log.write_text(
        "\n".join(
            [
                _line(t - 5, "G1CollectForAllocation", 90_000_000),  # before the window
                _line(t + 1, "G1CollectForAllocation", 40_000_000),
                _line(t + 2, "Cleanup", 42_082),  # a periodic cleanup: not a pause
                "[2026-12-04T22:08:01.513+0000][725.583s][info][gc       ] GC(273) Pause Young (Normal) 32.884ms",
                _line(t + 3, "G1CollectForAllocation", 60_000_000),
                _line(t + 4, "G1PauseRemark", 10_000_000),
                _line(t + 11, "G1CollectForAllocation", 500_000_000),  # after it
            ]
        )
        + "\n"
    )
    got = pauses_in(log, t, t + 10)
    assert got["count"] == 3
    assert got["total_ms"] == 110.0
    assert got["share"] == 0.011
    assert (got["p50_ms"], got["max_ms"]) == (40.0, 60.0)
    assert got["by_cause_ms"] == {"G1CollectForAllocation": 100.0, "G1PauseRemark": 10.0}


def test_reads_rotated_files_written_in_the_window_only(tmp_path: Path) -> None:
    t = time.time()
    (tmp_path / "gc.log").write_text(_line(t - 1, "G1CollectForAllocation", 20_000_000) + "\n")
    (tmp_path / "gc.log.0").write_text(_line(t - 2, "G1CollectForAllocation", 30_000_000) + "\n")
    old = tmp_path / "gc.log.1"
    old.write_text(_line(t - 3, "G1CollectForAllocation", 70_000_000) + "\n")
    os.utime(old, (t - 3600, t - 3600))  # last written before the window: not read
    got = pauses_in(tmp_path / "gc.log", t - 10, t)
    assert (got["count"], got["total_ms"]) == (2, 50.0)


def test_an_empty_window_has_no_pauses(tmp_path: Path) -> None:
    log = tmp_path / "gc.log"
    log.write_text("")
    got = pauses_in(log, 0.0, 10.0)
    assert (got["count"], got["p99_ms"], got["share"]) == (0, None, 0.0)


def test_the_local_cassandra_logs_its_safepoints(infrastructure: None) -> None:
    """infra.sh starts Cassandra with -Xlog:gc,safepoint:file=...: without it the benchmarks
    cannot put the store's pauses beside their latency."""
    pid = cassandra_pid()
    assert pid is not None
    log = gc_log_of(pid)
    assert log is not None and log.exists()
    got = pauses_in(log, 0.0, time.time())
    assert got["count"] >= 1  # at least its start-up collections
