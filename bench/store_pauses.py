"""How long the local Cassandra stood still within a benchmark phase.

A JVM stops every thread at a safepoint (for a garbage collection above all), and a request that
meets the stop waits it out, so a store's write latency cannot have a p99 below its pauses.
``deploy/local/infra.sh`` starts Cassandra with ``-Xlog:gc,safepoint:file=.../gc.log``, which logs
every safepoint with its total time (reaching it included); this module reads those lines for a
window of wall-clock time, so a benchmark can put its latency tails beside the store's pauses
in the same run.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import psutil

from auditmesh.metrics import percentile

__all__ = ["gc_log_of", "pauses_in", "store_pauses"]

_SAFEPOINT = re.compile(r"^\[([^\]]+)\].*\[safepoint\s*\] Safepoint \"([^\"]+)\".* Total: (\d+) ns")
_LOG_FILE = re.compile(r"^-Xlog:[^:]*safepoint[^:]*:file=\"?([^\":]+)")
MIN_MS = 1.0
"""Safepoints shorter than this (the JVM's periodic cleanups, ~50 us) are not counted as pauses."""


def gc_log_of(pid: int) -> Path | None:
    """The unified JVM log file the process at ``pid`` writes its safepoints to, if any."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    for arg in args:
        found = _LOG_FILE.match(arg)
        if found:
            return Path(found.group(1))
    return None


def _lines(log: Path, since: float) -> list[str]:
    """The current log and the rotated ones (``gc.log.0`` ...) written to since ``since``."""
    files = [p for p in log.parent.glob(log.name + ".*") if p.suffix[1:].isdigit()] + [log]
    out: list[str] = []
    for path in files:
        try:
            if path.stat().st_mtime < since:
                continue
            out += path.read_text(errors="replace").splitlines()
        except OSError:
            continue
    return out


def store_pauses(pid: int | None, since: float, until: float) -> dict[str, Any] | None:
    """The pauses of the JVM at ``pid`` (see :func:`pauses_in`); None when it logs no safepoints."""
    log = gc_log_of(pid) if pid else None
    return None if log is None else pauses_in(log, since, until)


def pauses_in(log: Path, since: float, until: float) -> dict[str, Any]:
    """The pauses of at least ``MIN_MS`` that ``log`` (and its rotated files) recorded between
    ``since`` and ``until`` (Unix seconds): how many, their total, the share of the window, p50,
    p99 and the longest, and the total by cause."""
    pauses: list[float] = []
    by_cause: dict[str, float] = {}
    for line in _lines(log, since):
        found = _SAFEPOINT.match(line)
        if not found:
            continue
        try:
            at = dt.datetime.fromisoformat(found.group(1)).timestamp()
        except ValueError:
            continue
        if not since <= at <= until:
            continue
        ms = int(found.group(3)) / 1e6
        if ms < MIN_MS:
            continue
        pauses.append(ms)
        by_cause[found.group(2)] = by_cause.get(found.group(2), 0.0) + ms
    pauses.sort()
    total = sum(pauses)
    return {
        "count": len(pauses),
        "total_ms": round(total, 1),
        "share": round(total / 1000 / (until - since), 4) if until > since else None,
        "p50_ms": round(percentile(pauses, 50), 1) if pauses else None,
        "p99_ms": round(percentile(pauses, 99), 1) if pauses else None,
        "max_ms": round(pauses[-1], 1) if pauses else None,
        "by_cause_ms": {k: round(v, 1) for k, v in sorted(by_cause.items(), key=lambda kv: -kv[1])},
    }
