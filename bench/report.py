"""Renders benchmark results as a table and writes them into the README between markers."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "BENCH_REDIS_URL",
    "PIPELINE_RUNS",
    "RESULTS",
    "faults_unfit",
    "git_commit",
    "machine",
    "render_faults",
    "render_runs",
    "render_saturday",
    "render_table",
    "render_write_path",
    "update_readme",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
PIPELINE_RUNS = RESULTS / "pipeline-runs.jsonl"
"""One line per full pipeline run that passed its checks: the spread of runs."""
BENCH_REDIS_URL = "redis://127.0.0.1:6379/13"
"""The benchmarks' Redis database: one no test slot uses (tests take 12, 14 and 15 of theirs)."""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def cassandra_pid() -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any("CassandraDaemon" in part for part in cmd):
            return int(proc.pid)
    return None


def redis_pid() -> int | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "redis-server":
            return int(proc.pid)
    return None


def wait_for_quiet_store(max_wait_s: float = 180.0, busy_cores: float = 0.3) -> float:
    """Wait until Cassandra's CPU use stays under ``busy_cores`` for 5 s (compactions and
    flushes left by earlier work finished), at most ``max_wait_s``; return the seconds waited.
    A run that starts while the store still compacts measures the compaction, not the mesh."""
    pid = cassandra_pid()
    if pid is None:
        return 0.0
    proc = psutil.Process(pid)
    started = time.monotonic()
    quiet = 0
    proc.cpu_percent(None)  # each call measures since the previous one
    while quiet < 5 and time.monotonic() - started < max_wait_s:
        time.sleep(1.0)
        quiet = quiet + 1 if proc.cpu_percent(None) / 100 < busy_cores else 0
    waited = round(time.monotonic() - started, 1)
    print(f"store quiet after {waited} s", flush=True)
    return waited


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        text = f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"
    else:
        text = f"{value:,}"
    return f"{text}{unit}"


def _store_pauses(full: dict[str, Any] | None, fixed: dict[str, Any] | None) -> str:
    """Cassandra's JVM pauses of each phase (bench.store_pauses), beside the write latency."""
    parts = []
    for label, p in (("full speed", full), ("fixed rate", fixed)):
        if p and p["count"]:
            pauses = "pause" if p["count"] == 1 else "pauses"
            parts.append(
                f"{label} {p['count']} {pauses}, p50 {_fmt(p['p50_ms'], ' ms')}, p99 {_fmt(p['p99_ms'], ' ms')},"
                f" longest {_fmt(p['max_ms'], ' ms')}, {p['share'] * 100:.1f}% of the phase"
            )
        elif p:
            parts.append(f"{label} none")
    return f"; Cassandra stood still (JVM safepoints >= 1 ms): {'; '.join(parts)}" if parts else ""


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "missed")


def render_table(r: dict[str, Any]) -> str:
    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    eps_ratio = ratio(r.get("throughput_eps"), r.get("direct_loader_eps"))
    log_ratio = ratio(r.get("log_p99_ns"), r.get("stdlib_logging_p99_ns"))
    best = r.get("direct_loader_best")
    best_text = f", {best['grouping']} grouping, {best['processes']} processes" if best else ""
    rows = [
        (
            "sustained end-to-end acked throughput",
            ">= 50K events/s and >= 0.8x direct loader",
            f"{_fmt(r.get('throughput_eps'), ' ev/s')} ({eps_ratio}x direct loader: "
            f"{_fmt(r.get('direct_loader_eps'), ' ev/s')}{best_text})",
            _verdict(None if eps_ratio is None else (r["throughput_eps"] >= 50_000 and eps_ratio >= 0.8)),
        ),
        (
            "`log()` caller cost p99",
            "<= 5 us and <= 0.5x stdlib logging",
            f"{_fmt(r.get('log_p99_ns'), ' ns')} (p50 {_fmt(r.get('log_p50_ns'), ' ns')}; stdlib logging p99 "
            f"{_fmt(r.get('stdlib_logging_p99_ns'), ' ns')}, {log_ratio}x; an empty function called with the "
            f"same arguments right after every `log()`, in the same thread: p99 "
            f"{_fmt(r.get('empty_call_p99_ns'), ' ns')})",
            _verdict(None if log_ratio is None else (r["log_p99_ns"] <= 5000 and log_ratio <= 0.5)),
        ),
        (
            "ack latency (log to ack), full speed",
            "-",
            f"p50 {_fmt(r.get('ack_p50_ms'), ' ms')}, p99 {_fmt(r.get('ack_p99_ms'), ' ms')} (includes time queued "
            "in the SDK while the producers outrun the store)",
            "",
        ),
        (
            f"ack latency at a fixed {_fmt(r.get('fixed_rate', {}).get('rate'))} ev/s",
            "-",
            f"p50 {_fmt(r.get('ack_p50_ms_fixed_rate'), ' ms')}, p99 {_fmt(r.get('ack_p99_ms_fixed_rate'), ' ms')} "
            f"({_fmt(r.get('fixed_rate_eps'), ' ev/s')} acked)",
            "",
        ),
        (
            "critical (P0) events, `log()` to ack p99, resends included",
            "< 500 us",
            f"{_fmt(r.get('critical_sdk_p99_us'), ' us')} (p50 {_fmt(r.get('critical_sdk_p50_us'), ' us')}, "
            f"{_fmt(r.get('critical_sdk_events'))} P0 events; at the fixed rate p99 "
            f"{_fmt(r.get('critical_sdk_p99_us_fixed_rate'), ' us')})",
            _verdict(None if r.get("critical_sdk_p99_us") is None else r["critical_sdk_p99_us"] < 500),
        ),
        (
            "critical events, ingest's last receipt to written p99 (processors; successful writes only)",
            "-",
            f"{_fmt(r.get('critical_p99_us'), ' us')} (p50 {_fmt(r.get('critical_p50_us'), ' us')}; at the "
            f"fixed rate {_fmt(r.get('critical_p99_us_fixed_rate'), ' us')})",
            "",
        ),
        (
            "storage write per batch p99",
            "< 5 ms",
            f"{_fmt(r.get('write_p99_ms'), ' ms')} (p50 {_fmt(r.get('write_p50_ms'), ' ms')}; at the fixed rate "
            f"{_fmt(r.get('write_p99_ms_fixed_rate'), ' ms')})"
            + _store_pauses(r.get("store_pauses"), r.get("store_pauses_fixed_rate")),
            _verdict(None if r.get("write_p99_ms") is None else r["write_p99_ms"] < 5),
        ),
        (
            "ghz `Submit`, 500-event batches (events ingest acknowledged, fresh ids)",
            ">= 200K events/s",
            _fmt(r.get("ghz_submit_eps"), " ev/s") + _ghz_detail(r.get("ghz_submit")),
            _verdict(None if r.get("ghz_submit_eps") is None else r["ghz_submit_eps"] >= 200_000),
        ),
        (
            "ghz `Stream`, 10 x 500-event batches per stream (the same)",
            "-",
            _fmt(r.get("ghz_stream_eps"), " ev/s") + _ghz_detail(r.get("ghz_stream")),
            "",
        ),
    ]
    lines = ["| measure | target | measured | |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    res = r.get("full_speed", {}).get("resources", {})
    if res:
        lines += ["", "| process (full-speed phase) | CPU (cores) | peak RSS (MB) |", "| --- | --- | --- |"]
        lines += [f"| {name} | {v['cpu_cores']} | {v['peak_rss_mb']} |" for name, v in sorted(res.items())]
    stalls = [("ingest", r.get("ingest", {}))] + [(f"processor-{i}", p) for i, p in enumerate(r.get("processors", []))]
    stalls = [(name, st["loop_lag_us"], st.get("gc") or {}) for name, st in stalls if st.get("loop_lag_us")]
    if stalls:
        lines += [
            "",
            "| event loop (full-speed phase) | lag p99 | stalls >= 10 ms | their overrun: own thread on a core "
            "| other threads on a core | waiting for a core | garbage collections (gen 0/1/2) "
            "| time in them, longest |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {name} | {_fmt(lag.get('p99'), ' us')} | {lag.get('stalls')} | {lag.get('stall_s_own_thread')} s "
            f"| {lag.get('stall_s_other_threads')} s | {lag.get('stall_s_waiting')} s | {_gc_counts(gc)} "
            f"| {_gc_time(gc)} |"
            for name, lag, gc in stalls
        ]
    m = r.get("machine", {})
    lines += [
        "",
        f"Machine: {m.get('cpus')} cores ({m.get('cpu')}), {m.get('memory_gb')} GiB, Python "
        f"{m.get('python')}, everything on one machine"
        + (
            f"; each side from an empty keyspace, load processes at nice {r['load_nice']} on both"
            if "load_nice" in r
            else ""
        )
        + f". Run {r.get('started')} at commit `{str(r.get('git_commit'))[:10]}` with `{r.get('command')}`.",
    ]
    return "\n".join(lines)


def _ghz_detail(g: dict[str, Any] | None) -> str:
    if not g or "acked_events" not in g:
        return ""
    return (
        f" ({g['acked_events']:,} events acknowledged, {g['retried_events']:,} answered RETRY; "
        f"{g['calls_ok']:,} of {g['calls']:,} calls OK)"
    )


def render_runs(runs: list[dict[str, Any]]) -> str:
    """The full pipeline runs kept in ``pipeline-runs.jsonl``: their spread, then each run."""

    def spread(key: str, unit: str = "", scale: float = 1.0) -> str:
        values = [x[key] / scale for x in runs if x.get(key) is not None]
        return f"{_fmt(min(values), unit)} to {_fmt(max(values), unit)}" if values else "not measured"

    if not runs:
        return "No full pipeline run recorded yet (`bench/results/pipeline-runs.jsonl`)."
    lines = [
        f"{len(runs)} full runs of `python -m bench.pipeline` ({runs[0]['started'][:10]} to "
        f"{runs[-1]['started'][:10]}): {spread('throughput_eps', ' ev/s')} for the mesh, "
        f"{spread('ratio_to_direct', 'x')} the direct loader, critical (P0) `log()` to ack p99 at the fixed "
        f"rate {spread('critical_sdk_p99_us_fixed_rate', ' ms', 1e3)}.",
        "",
        "| run | commit | mesh | direct loader | ratio | fixed-rate P0 `log()` to ack p99 | ghz Submit | ghz Stream |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in runs:
        p0 = x.get("critical_sdk_p99_us_fixed_rate")
        lines.append(
            f"| {x['started']} | `{str(x.get('git_commit'))[:10]}` | {_fmt(x.get('throughput_eps'), ' ev/s')} "
            f"| {_fmt(x.get('direct_loader_eps'), ' ev/s')} | {_fmt(x.get('ratio_to_direct'), 'x')} "
            f"| {_fmt(None if p0 is None else p0 / 1e3, ' ms')} | {_fmt(x.get('ghz_submit_eps'), ' ev/s')} "
            f"| {_fmt(x.get('ghz_stream_eps'), ' ev/s')} |"
        )
    lines += ["", "From `bench/results/pipeline-runs.jsonl`; written by `python -m bench.report runs`."]
    return "\n".join(lines)


def render_saturday(r: dict[str, Any]) -> str:
    """The Saturday-rush table: ack latency per lane (``lane_ack_ms``) against issue 22's
    targets, from a pipeline run."""
    sat = r["saturday"]
    lanes = sat["lane_ack_ms"]
    rows = [
        "| lane | ack p50 | p90 | p99 | events |",
        "| --- | --- | --- | --- | --- |",
    ]
    for lane in ("wedding_day", "normal", "critical"):
        s = lanes[lane]
        cells = " | ".join(_fmt(s[q], " ms") for q in ("p50", "p90", "p99"))
        rows.append(f"| {lane.replace('_', ' ')} | {cells} | {s['events']:,} |")
    wd_normal = sat["wedding_day_p99_over_normal_p99"]
    wd_critical = sat["wedding_day_p99_over_critical_p99"]
    bulk = sat["bulk_eps_vs_full_speed"]
    rows += [
        "",
        "| measure | target | measured | |",
        "| --- | --- | --- | --- |",
        f"| wedding-day ack p99 / normal ack p99 | <= 0.2 | {_fmt(wd_normal)} |"
        f" {_verdict(None if wd_normal is None else wd_normal <= 0.2)} |",
        f"| wedding-day ack p99 / P0 lane's p99 | <= 2 | {_fmt(wd_critical)} |"
        f" {_verdict(None if wd_critical is None else wd_critical <= 2)} |",
        f"| bulk throughput in the rush / the full-speed phase's | >= 0.9 | {_fmt(bulk)}"
        f" ({_fmt(sat['bulk_eps'], ' ev/s')}) | {_verdict(None if bulk is None else bulk >= 0.9)} |",
        "",
        f"Bulk SDK clients at full speed plus three probe clients (linger 5 ms, each"
        f" {sat['probe_rate']:g} events/s: {sat['today_weddings']} weddings in today's calendar, other"
        " weddings, P0), each event timed from `log()` to its ack. Run"
        f" {r['started']} at commit `{r['git_commit'][:10]}` with `{r['command']}`.",
    ]
    return "\n".join(rows)


def render_write_path(w: dict[str, Any]) -> str:
    """``bench.write_path``'s result as the README's sentence and table."""
    text = (
        f"`python -m bench.write_path` compares the processor's row encoding with the driver's `bind` "
        f"in one run ({w['driver_bind_us_per_event']} against {w['rowcodec_us_per_event']} us of CPU per "
        f"event, {w['speedup']}x; {w['events']:,} events, the batches checked equal; run {w['started']} at "
        f"commit `{str(w['git_commit'])[:10]}`, `bench/results/write-path-latest.json`)."
    )
    written = w.get("written")
    if not written:
        return text
    names = {
        "store": "the store (rowcodec rows, cassandra-driver)",
        "driver_bind": f"cassandra-driver {written['cassandra_driver_version']}, `BatchStatement.add`",
        "acsylla": f"acsylla {written['acsylla_version']} (the C++ driver)",
    }
    rows = [
        f"| {names.get(name, name)} | {us} | {written['events_per_second'][name]:,} |"
        for name, us in written["cpu_us_per_event"].items()
    ]
    return (
        text + f" The same run then wrote {written['events_per_round']:,} events a round through each writer, "
        f"alternating for {written['rounds']} rounds (same rows, unlogged batches of up to 100 rows, "
        "8 in flight; every event's locator and a sample of events read back):\n\n"
        + "\n".join(["| writer | process CPU per event, us (median) | events/s (median) |", "| --- | --- | --- |"])
        + "\n"
        + "\n".join(rows)
        + _render_write_latency(w.get("latency"))
    )


def _render_write_latency(latency: dict[str, Any] | None) -> str:
    if not latency:
        return ""
    names = {"store": "the store's connections (Nagle off)", "driver_default_sockets": "driver's socket defaults"}
    sizes = list(next(iter(latency["ms"].values())))
    head = "| one write of | " + " | ".join(names.get(name, name) for name in latency["ms"]) + " |"
    rows = [
        f"| {int(size):,} events | "
        + " | ".join(f"{v[size]['p50']} ms (max {v[size]['max']})" for v in latency["ms"].values())
        + " |"
        for size in sizes
    ]
    return (
        f"\n\nOne write at a time, {latency['writes_per_size']} of each size, the two stores alternating "
        "(p50, and the slowest write):\n\n" + "\n".join([head, "| --- | --- | --- |", *rows])
    )


def _gc_counts(gc: dict[str, Any]) -> str:
    return "/".join(str(n) for n in gc["collections"]) if gc.get("collections") else "-"


def _gc_time(gc: dict[str, Any]) -> str:
    if not gc.get("seconds"):
        return "-"
    return f"{sum(gc['seconds']):.3f} s, {_fmt(gc.get('max'), ' us')}"


def update_readme(
    r: dict[str, Any],
    start: str = "<!-- bench:pipeline:start -->",
    end: str = "<!-- bench:pipeline:end -->",
    text: str | None = None,
) -> None:
    content = README.read_text()
    if start not in content or end not in content:
        return
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text if text is not None else render_table(r)}\n{end}{tail}")


def faults_unfit(data: dict[str, Any]) -> str:
    """Why a faults record must not become the README table ("" when it may): it must come
    from a run of every fault test that passed, and every fault in it must have passed."""
    if data.get("passed") is not True:
        return "the run that wrote it did not pass (or does not say that it passed)"
    if data.get("complete") is not True:
        not_run = ", ".join(data.get("not_run") or []) or "unknown"
        return f"the run did not run every fault test (not run: {not_run})"
    failed = [str(r.get("fault")) for r in data.get("faults", []) if r.get("passed") is not True]
    if failed:
        return f"faults that did not pass: {'; '.join(failed)}"
    if not data.get("faults"):
        return "it records no fault"
    return ""


def _failover_cell(r: dict[str, Any]) -> str:
    """The failover column: the longest gap in acks, the slowest batch, and for a query fault
    the longest gap between pages; "-" for a fault with no replica to fail over to."""
    if "failover_s" not in r:
        return "-"
    cell = f"{r['failover_s']} s (slowest P0 {r['slowest_p0_s']} s"
    if "query_gap_s" in r:
        cell += f"; pages {r['query_gap_s']} s"
    return cell + ")"


def render_faults(data: dict[str, Any], failover: dict[str, Any] | None = None) -> str:
    """The faults table; with a failover record (tests/failover) its rows follow, and the
    failover column holds their gaps."""
    lines = [
        "| fault | load | events acknowledged | events found | duplicates | resent | recovery | failover |"
        " peak service RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [*data["faults"], *(failover or {}).get("faults", [])]
    for r in rows:
        recovery = "n/a" if r["recovery_s"] is None else f"{r['recovery_s']} s"
        lines.append(
            f"| {r['fault']} | {r['logged_eps']:,.0f} ev/s | {r['acked']:,} | {r['found']:,} | "
            f"{r['duplicates']} | {r['resent']:,} | {recovery} | {_failover_cell(r)} | {r['peak_rss_mb']} MB |"
        )
    lines += [
        "",
        f"From `pytest tests/faults` on {data['run']} (every fault test run and passed); load is the rate the SDK "
        "logged at, as measured; table written by `python -m bench.report faults`.",
    ]
    if failover:
        lines[-1] += (
            f" Failover rows from `pytest tests/failover` on {failover['run']} (every failover test run and passed;"
            " a three-node cluster, RF 3, LOCAL_QUORUM; two ingest and two query replicas): the failover column is"
            " the longest time the SDK saw no acknowledgement, and the slowest P0 event from `log()` to its ack."
        )
    return "\n".join(lines)


def main() -> int:
    import json
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "pipeline"
    if what == "faults":
        data = json.loads((RESULTS / "faults-latest.json").read_text())
        unfit = faults_unfit(data)
        if unfit:
            print(f"bench/results/faults-latest.json not rendered: {unfit}", file=sys.stderr)
            return 1
        failover_file = RESULTS / "failover-latest.json"
        failover = json.loads(failover_file.read_text()) if failover_file.exists() else None
        unfit = faults_unfit(failover) if failover is not None else ""
        if unfit:
            print(f"bench/results/failover-latest.json not rendered: {unfit}", file=sys.stderr)
            return 1
        update_readme(data, "<!-- faults:start -->", "<!-- faults:end -->", render_faults(data, failover))
    elif what == "query":
        data = json.loads((RESULTS / "query-latest.json").read_text())
        from bench.query import render_query

        update_readme(data, "<!-- bench:query:start -->", "<!-- bench:query:end -->", render_query(data))
    elif what == "runs":
        text = PIPELINE_RUNS.read_text() if PIPELINE_RUNS.exists() else ""
        runs = [json.loads(line) for line in text.splitlines() if line.strip()]
        update_readme({}, "<!-- bench:runs:start -->", "<!-- bench:runs:end -->", render_runs(runs))
        print(render_runs(runs))
    elif what == "write-path":
        data = json.loads((RESULTS / "write-path-latest.json").read_text())
        update_readme(data, "<!-- bench:write-path:start -->", "<!-- bench:write-path:end -->", render_write_path(data))
        print(render_write_path(data))
    else:
        update_readme(json.loads((RESULTS / "latest.json").read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
