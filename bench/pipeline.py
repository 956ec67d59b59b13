"""The pipeline benchmark: the real mesh against its baselines, in one run.

    python -m bench.pipeline                 # full run (60 s measured at full speed), ~4 min
    python -m bench.pipeline --smoke         # seconds; what CI runs so the benchmark cannot rot

Phases, one after another on the same machine: (1) the mesh (Cassandra, Redis, ingest, N
processors, query as separate processes) driven by SDK clients in several processes at full
speed, then at a fixed rate, then the Saturday rush (bench/saturday.py: full speed again, with
probe clients timing each lane's ack latency); (2) ghz against ingest's Submit and Stream; (3)
the direct cassandra-driver loader into the same tables, each of its configurations on its own.

Both sides start the same way: from an empty keyspace (``auditmesh_bench``, dropped and
recreated before the mesh and before each direct-loader configuration), after Cassandra has
gone quiet, with the same warm-up before measuring, and with their load processes at the same
CPU priority (``--load-nice``, 0 by default: no process is reniced). ghz sends fresh event ids
in every call and is credited with the events ingest acknowledged, not with its calls.

Critical (P0) latency is measured in the SDK clients, from ``log()`` to the ack, retries
included; the processors' own figure (from ingest's last receipt to the write, successful
writes only) is kept beside it.

A run that passes its checks (every event acknowledged, no P0 event left unacknowledged, ghz
events stored under fresh ids) writes ``bench/results/pipeline-<time>.json`` and
``bench/results/latest.json`` (``smoke-latest.json`` for ``--smoke``), and a full run appends a
line to ``bench/results/pipeline-runs.jsonl`` and rewrites the README's performance section. A
run that fails its checks prints them and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from auditmesh.config import StoreConfig
from auditmesh.event_ids import locator_partition
from auditmesh.mesh import MeshLayout, infra
from auditmesh.metrics import percentile
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.store import EventStore
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from auditmesh.telemetry import budget
from auditmesh.telemetry.spans import read_jsonl
from auditmesh.telemetry.tracing import DEFAULT_RATIO
from bench import saturday, secure
from bench.cost import cpu_us_per_event
from bench.direct_loader import run_loader
from bench.loadgen import run_client
from bench.report import (
    BENCH_REDIS_URL,
    PIPELINE_RUNS,
    RESULTS,
    cassandra_pid,
    git_commit,
    machine,
    redis_pid,
    render_runs,
    render_saturday,
    render_table,
    update_readme,
    wait_for_quiet_store,
)
from bench.store_pauses import store_pauses

BENCH_SLOT = int(os.environ.get("AUDITMESH_BENCH_SLOT", "0"))
"""On a host shared with test runs, a test slot to run in: a keyspace, ports and a Redis
database of its own (the slot's first), so that the run drops and loads nothing of another's."""
KEYSPACE = "auditmesh_bench" + (f"_{BENCH_SLOT}" if BENCH_SLOT else "")
_PORTS = 12_000 + 200 * BENCH_SLOT if BENCH_SLOT else 0
_REDIS_URL = (
    f"redis://127.0.0.1:6379/{12 - 4 * BENCH_SLOT if BENCH_SLOT <= 3 else 12 + 4 * (BENCH_SLOT - 3)}"
    if BENCH_SLOT
    else BENCH_REDIS_URL
)
REQUIRED_KEYS = (
    "throughput_eps",
    "direct_loader_eps",
    "log_p50_ns",
    "log_p99_ns",
    "stdlib_logging_p99_ns",
    "ack_p99_ms",
    "critical_p99_us",
    "critical_sdk_p99_us",
    "write_p99_ms",
    "ghz_submit_eps",
    "ghz_stream_eps",
    "lane_ack_ms",
    "machine",
    "git_commit",
)
GHZ = Path(__file__).resolve().parent / "ghz" / "run.sh"


class ProcessSampler:
    """Samples CPU seconds and peak RSS of named processes every half second."""

    def __init__(self) -> None:
        self._procs: dict[str, psutil.Process] = {}
        self._cpu0: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = 0.0

    def watch(self, name: str, pid: int) -> None:
        proc = psutil.Process(pid)
        self._procs[name] = proc
        self.peak_rss[name] = 0

    def start(self) -> None:
        self._started = time.monotonic()
        for name, proc in self._procs.items():
            times = proc.cpu_times()
            self._cpu0[name] = times.user + times.system
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def _sample(self) -> None:
        for name, proc in self._procs.items():
            try:
                self.peak_rss[name] = max(self.peak_rss[name], proc.memory_info().rss)
            except psutil.Error:
                pass

    def stop(self) -> dict[str, dict[str, float]]:
        self._sample()
        elapsed = time.monotonic() - self._started
        self._stop.set()
        out = {}
        for name, proc in self._procs.items():
            try:
                times = proc.cpu_times()
                cpu = times.user + times.system - self._cpu0[name]
            except psutil.Error:
                cpu = float("nan")
            out[name] = {"cpu_cores": round(cpu / elapsed, 3), "peak_rss_mb": round(self.peak_rss[name] / 2**20, 1)}
        return out


def _spawn(target: Any, kwargs: dict[str, Any]) -> tuple[mp.Process, Any]:
    parent, child = mp.Pipe(duplex=False)
    proc = mp.Process(target=target, kwargs={"conn": child, **kwargs}, daemon=False)
    proc.start()
    return proc, parent


def _ms(values: list[int], q: float, scale: float) -> float | None:
    p = percentile(sorted(values), q)
    return None if p is None else round(p / scale, 3)


def _with_unacked(values: list[int], unacked: int, q: float, scale: float) -> float | None:
    """A percentile of acknowledged latencies with ``unacked`` events counted as slower than
    any: None when the percentile falls among them (it is not known, only that it is large)."""
    ordered: list[float] = sorted(float(v) for v in values) + [math.inf] * max(0, unacked)
    p = percentile(ordered, q)
    return None if p is None or math.isinf(p) else round(p / scale, 3)


def run_pipeline_phase(
    layout: MeshLayout,
    supervisor: Supervisor,
    *,
    clients: int,
    streams: int,
    warmup_s: float,
    duration_s: float,
    rate: float,
    log_dir: str,
    linger_ms: float | None = None,
    nice: int = 0,
    trace_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    sampler = ProcessSampler()
    for proc in layout.services():
        pid = supervisor.pid(proc.name)
        if pid:
            sampler.watch(proc.name, pid)
    for name, pid in (("cassandra", cassandra_pid()), ("redis", redis_pid())):
        if pid:
            sampler.watch(name, pid)
    start_at = time.time() + 2.0
    spawned = [
        _spawn(
            run_client,
            {
                "target": layout.ingest_target,
                "index": i,
                "weddings": 1000,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "rate": rate / clients if rate else 0.0,
                "streams": streams,
                "log_dir": log_dir,
                "start_at": start_at,
                "linger_ms": linger_ms,
                "nice": nice,
                "trace_env": trace_env,
            },
        )
        for i in range(clients)
    ]
    for i, (proc, _) in enumerate(spawned):
        sampler.watch(f"client-{i}", proc.pid)
    time.sleep(max(0.0, start_at - time.time()) + warmup_s)
    for name in [layout.processor(i).name for i in range(layout.processors)] + [layout.ingest().name]:
        supervisor.signal(name, signal.SIGUSR1)  # latency reservoirs start after warm-up
    sampler.start()
    window_start = time.time()
    results = [conn.recv() for _, conn in spawned]
    resources = sampler.stop()
    pauses = store_pauses(cassandra_pid(), window_start, time.time())
    for proc, _ in spawned:
        proc.join(30)
    eps = sum(r["acked_in_window"] / r["window_s"] for r in results)
    log_ns = [v for r in results for v in r["log_ns"]]
    stdlib_ns = [v for r in results for v in r["stdlib_ns"]]
    empty_ns = [v for r in results for v in r["empty_ns"]]
    ack_ns = [v for r in results for v in r["ack_ns"]]
    critical_ns = [v for r in results for v in r["critical_ack_ns"]]
    critical_unacked = sum(r["critical_unacked"] for r in results)
    return {
        "eps": round(eps, 1),
        "clients": clients,
        "streams_per_client": streams,
        "rate": rate,
        "sent": sum(r["sent"] for r in results),
        "acked": sum(r["acked"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "resent": sum(r["resent"] for r in results),
        "log_p50_ns": _ms(log_ns, 50, 1),
        "log_p99_ns": _ms(log_ns, 99, 1),
        "log_p999_ns": _ms(log_ns, 99.9, 1),
        "stdlib_p50_ns": _ms(stdlib_ns, 50, 1),
        "stdlib_p99_ns": _ms(stdlib_ns, 99, 1),
        "stdlib_p999_ns": _ms(stdlib_ns, 99.9, 1),
        "empty_call_p50_ns": _ms(empty_ns, 50, 1),
        "empty_call_p99_ns": _ms(empty_ns, 99, 1),
        "ack_p50_ms": _ms(ack_ns, 50, 1e6),
        "ack_p99_ms": _ms(ack_ns, 99, 1e6),
        # P0 events, log() to ack in the SDK, resends included; unacked ones count as slowest
        "critical_sdk_events": len(critical_ns),
        "critical_sdk_unacked": critical_unacked,
        "critical_sdk_p50_us": _with_unacked(critical_ns, critical_unacked, 50, 1e3),
        "critical_sdk_p99_us": _with_unacked(critical_ns, critical_unacked, 99, 1e3),
        "critical_sdk_max_us": _with_unacked(critical_ns, critical_unacked, 100, 1e3),
        "resources": resources,
        # Cassandra's JVM pauses in the measured window: a write's tail cannot be below them
        "store_pauses": pauses,
    }


def fresh_keyspace(quiet_s: float) -> float:
    """Drop and recreate the benchmark's keyspace, then wait for Cassandra to go quiet; return
    the seconds waited. Each side of the comparison starts from this state: what an earlier
    phase left would make its compactions (and so its numbers) depend on the order of phases."""
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    return wait_for_quiet_store(quiet_s)


def run_direct_phase(
    *, processes: int, grouping: str, warmup_s: float, duration_s: float, concurrency: int, nice: int
) -> dict[str, Any]:
    start_at = time.time() + 2.0
    spawned = [
        _spawn(
            run_loader,
            {
                "keyspace": KEYSPACE,
                "index": i,
                "grouping": grouping,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "concurrency": concurrency,
                "start_at": start_at,
                "nice": nice,
            },
        )
        for i in range(processes)
    ]
    results = [conn.recv() for _, conn in spawned]
    for proc, _ in spawned:
        proc.join(30)
    eps = sum(r["written"] / r["elapsed_s"] for r in results)
    return {
        "eps": round(eps, 1),
        "processes": processes,
        "grouping": grouping,
        "concurrency": concurrency,
        "written": sum(r["written"] for r in results),
        "written_total": sum(r["written_total"] for r in results),
    }


def _ghz_group(run: str, kind: str, request: int) -> str:
    """The first part (the SDK's 16 hex digits) of the ids of one ghz call's events."""
    return f"{run}{'a' if kind == 'submit' else 'b'}{request:07x}"


def _ghz_data(path: Path, run: str, kind: str, batches_per_message: int, batch_events: int) -> None:
    """ghz's call data: events whose ids are fresh in every call. ghz runs the data through Go's
    text/template for each call, so an id is the SDK's format made of this run, the profile and
    the call's request number (``{{.RequestNumber}}``), then the event's place in the call."""
    synthetic = Synthetic(weddings=1000, seed=900)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    import auditpb.v1.audit_pb2 as pb

    group = _ghz_group(run, kind, 0)[:9] + "{{printf `%07x` .RequestNumber}}"

    def batch(n: int) -> dict[str, Any]:
        events = []
        for i, kw in enumerate(synthetic.events(batch_events)):
            events.append(
                {
                    **kw,
                    "event_id": f"{group}-{n * batch_events + i + 1:x}",
                    "occurred_at": now,
                    "severity": pb.Severity.Name(kw["severity"]),
                    "outcome": pb.Outcome.Name(kw["outcome"]),
                }
            )
        return {"batch_id": f"{group}-b{n}", "events": events}

    data: Any = batch(0) if batches_per_message == 1 else [batch(n) for n in range(batches_per_message)]
    path.write_text(json.dumps(data))


class IngestCounters:
    """Ingest's published counters, read whenever its stats file changes (every 2 s), with the
    time each publication was written."""

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self._path = supervisor.stats_file(name)
        self.samples: list[tuple[float, int, int]] = []  # (written at, accepted, retried)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        seen = 0.0
        while not self._stop.wait(0.05):
            try:
                mtime = self._path.stat().st_mtime
                if mtime == seen:
                    continue
                stats = json.loads(self._path.read_text())
            except (OSError, ValueError):
                continue
            seen = mtime
            self.samples.append((mtime, int(stats.get("accepted", 0)), int(stats.get("retried", 0))))

    def latest(self) -> tuple[float, int, int]:
        """The first publication written after this call: counters as they are now, not as
        they were up to 2 s ago."""
        asked = time.time()
        deadline = time.monotonic() + 6.0
        while not (self.samples and self.samples[-1][0] > asked):
            if time.monotonic() > deadline:
                raise RuntimeError("ingest published no counters for 6 s")
            time.sleep(0.05)
        return self.samples[-1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _stored_ghz_events(run: str, kind: str, calls: int, events_per_call: int) -> int:
    """Distinct events of a ghz profile in the store, from their ``events_by_id`` locator rows
    (each call's ids share one id group; replayed ids would be counted once)."""
    store = EventStore.connect(StoreConfig(keyspace=KEYSPACE))
    try:
        blocks = sorted({locator_partition(f"{_ghz_group(run, kind, 0)}-{s:x}")[1] for s in (1, events_per_call)})
        query = store.session.prepare(
            f"SELECT COUNT(*) FROM {KEYSPACE}.events_by_id WHERE id_group = ? AND id_block IN ?"
        )
        return sum(
            store.session.execute(query, (_ghz_group(run, kind, request), list(range(blocks[0], blocks[-1] + 1))))
            .one()
            .count
            for request in range(calls + 64)  # ghz numbers its requests from 0 or 1; calls cut short too
        )
    finally:
        store.close()


def run_ghz(
    kind: str,
    target: str,
    workdir: Path,
    duration: str,
    batch_events: int,
    messages: int,
    counters: IngestCounters,
    concurrency: int = 16,
) -> dict[str, Any]:
    """One ghz profile. Its throughput is the events ingest acknowledged (its own ``accepted``
    counter) between two of its publications inside ghz's run, not ghz's OK calls times the
    events per call: a Stream call is OK even when its acks said RETRY."""
    run = os.urandom(4).hex()
    data = workdir / f"ghz-{kind}-data.json"
    out = RESULTS / f"ghz-{kind}.json"
    _ghz_data(data, run, kind, messages, batch_events)
    before = counters.latest()
    started = time.time()
    subprocess.run(
        [str(GHZ), kind, target, str(data), str(out), duration, str(concurrency)], check=True, stdout=subprocess.DEVNULL
    )
    ended = time.time()
    time.sleep(3.0)  # what ghz left in flight settles; then a publication written after that
    after = counters.latest()
    inside = [s for s in counters.samples if started <= s[0] <= ended]
    if len(inside) >= 2 and inside[-1][0] - inside[0][0] >= 1.0:
        (t0, a0, _), (t1, a1, _) = inside[0], inside[-1]
        eps, window = (a1 - a0) / (t1 - t0), "between ingest's first and last publication inside ghz's run"
    else:
        eps, window = (after[1] - before[1]) / (ended - started), "ghz's whole run, and what it left in flight"
    report = json.loads(out.read_text())
    lat = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    per_call_events = batch_events * messages
    acked = after[1] - before[1]
    calls = int(report.get("count") or 0)
    stored = _stored_ghz_events(run, kind, calls, per_call_events)
    return {
        "eps": round(eps, 1),
        "eps_window": window,
        "acked_events": acked,
        "retried_events": after[2] - before[2],
        "stored_events": stored,
        "calls": calls,
        "calls_ok": report.get("statusCodeDistribution", {}).get("OK", 0),
        "errors": report.get("errorDistribution"),
        "events_per_call": per_call_events,
        "ghz_total_s": round(report["total"] / 1e9, 2),
        "p50_ms": round(lat.get(50, 0) / 1e6, 2) if lat else None,
        "p99_ms": round(lat.get(99, 0) / 1e6, 2) if lat else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="a few seconds per phase, for CI")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--rate", type=float, default=3000.0, help="events/s of the fixed-rate phase")
    parser.add_argument("--linger-ms", type=float, help="the SDK clients' linger (default: the SDK's)")
    parser.add_argument(
        "--load-nice", type=int, default=0, help="niceness of the SDK load processes and of the direct loader alike"
    )
    parser.add_argument(
        "--direct-processes", default="1,2,3", help="direct-loader process counts to measure, for each grouping"
    )
    parser.add_argument("--probe-rate", type=float, default=20.0, help="events/s of each Saturday-rush probe")
    parser.add_argument("--no-ghz", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs and stats after the run")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--secure", action="store_true", help="then the security modes side by side (bench.secure)")
    parser.add_argument("--alerts", action="store_true", help="then bench.alerts: alert latency, rules on vs off")
    args = parser.parse_args()
    direct_processes = [int(p) for p in args.direct_processes.split(",")]
    if args.smoke:
        args.duration, args.warmup, args.clients = 3.0, 1.0, 1
        direct_processes = [2]
    ghz_duration = "5s" if args.smoke else "20s"  # at least two of ingest's counter publications inside
    # The smoke run's ghz keeps fewer calls in flight: 16 streams of 5,000 events each are more than
    # a slow host acknowledges in 5 s, and calls still open at the end count for nothing.
    ghz_concurrency = 4 if args.smoke else 16

    infra("up")
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-bench-"))
    layout = MeshLayout(
        ingest_port=23051 + _PORTS,
        processor_base_port=23061 + _PORTS,
        processors=args.processors,
        query_port=23071 + _PORTS,
        keyspace=KEYSPACE,
        # Traced as in production (critical batches always, the rest at the default ratio), into
        # a span file that `auditmesh budget` reads at the end of the run.
        extra_env={
            "AUDITMESH_TOKEN_KEY": "bench",
            "AUDITMESH_REDIS_URL": _REDIS_URL,
            "AUDITMESH_SPANS_FILE": str(run_dir / "spans.jsonl"),
        },
    )
    supervisor = Supervisor(run_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "linger_ms": args.linger_ms,
        "load_nice": args.load_nice,
    }
    quiet_s = 10.0 if args.smoke else 180.0
    # Every side starts from an empty keyspace: what earlier runs or phases left would make its
    # compactions (and so its numbers) depend on what ran before.
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    saturday.prepare(KEYSPACE)  # before ingest starts: it reads the calendar then
    waits: list[float] = []
    counters: IngestCounters | None = None
    try:
        layout.start(supervisor)
        waits.append(wait_for_quiet_store(quiet_s))
        full = run_pipeline_phase(
            layout,
            supervisor,
            clients=args.clients,
            streams=args.streams,
            warmup_s=args.warmup,
            duration_s=args.duration,
            rate=0,
            log_dir=str(run_dir),
            linger_ms=args.linger_ms,
            nice=args.load_nice,
        )
        time.sleep(2.5)  # processors publish their latency reservoirs every 2 s
        processors = [supervisor.stats(layout.processor(i).name) or {} for i in range(layout.processors)]
        ingest = supervisor.stats(layout.ingest().name) or {}
        waits.append(wait_for_quiet_store(quiet_s))  # the full-speed phase leaves compactions behind
        fixed = run_pipeline_phase(
            layout,
            supervisor,
            clients=args.clients,
            streams=args.streams,
            warmup_s=args.warmup / 2,
            duration_s=args.duration / 2,
            rate=args.rate,
            log_dir=str(run_dir),
            linger_ms=args.linger_ms,
            nice=args.load_nice,
        )
        time.sleep(2.5)
        # Read now: the next phases' writes would land in the same reservoirs.
        fixed_processors = [supervisor.stats(layout.processor(i).name) or {} for i in range(layout.processors)]
        fixed_ingest = supervisor.stats(layout.ingest().name) or {}
        waits.append(wait_for_quiet_store(quiet_s))
        result["saturday"] = saturday.run_phase(
            layout.ingest_target,
            lambda: run_pipeline_phase(
                layout,
                supervisor,
                clients=args.clients,
                streams=args.streams,
                warmup_s=args.warmup,
                duration_s=args.duration,
                rate=0,
                log_dir=str(run_dir),
                linger_ms=args.linger_ms,
                nice=args.load_nice,
            ),
            rate=args.probe_rate,
            warmup_s=args.warmup,
            duration_s=args.duration,
            full_speed_eps=full["eps"],
        )
        result["lane_ack_ms"] = result["saturday"]["lane_ack_ms"]
        if not args.no_ghz:
            counters = IngestCounters(supervisor, layout.ingest().name)
            target = layout.ingest_target
            result["ghz_submit"] = run_ghz("submit", target, run_dir, ghz_duration, 500, 1, counters, ghz_concurrency)
            result["ghz_stream"] = run_ghz("stream", target, run_dir, ghz_duration, 500, 10, counters, ghz_concurrency)
    finally:
        if counters is not None:
            counters.stop()
        layout.stop(supervisor)
    spans = read_jsonl(run_dir / "spans.jsonl") if (run_dir / "spans.jsonl").exists() else []
    stages = budget.check(spans)
    result["latency_budget"] = {
        "spans": len(spans),
        "table": budget.render(stages),
        "violated": [r.stage + (" (wedding day)" if r.wedding_day else "") for r in stages if r.violated],
    }
    print(f"latency budget over {len(spans)} spans (auditmesh budget):\n{result['latency_budget']['table']}")
    write = [s.get("write_us", {}) for s in processors]
    critical = [s.get("critical_us", {}) for s in processors]
    fixed_critical = [s.get("critical_us", {}) for s in fixed_processors]
    fixed_write = [s.get("write_us", {}) for s in fixed_processors]
    direct = []
    for grouping in ("partition", "replica"):
        for processes in direct_processes:
            waits.append(fresh_keyspace(quiet_s))
            direct.append(
                run_direct_phase(
                    processes=processes,
                    grouping=grouping,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    concurrency=16,
                    nice=args.load_nice,
                )
            )
    best_direct = max(direct, key=lambda d: d["eps"])
    result.update(
        {
            "waited_for_quiet_store_s": waits,
            "full_speed": full,
            "fixed_rate": fixed,
            "direct_loader": direct,
            "processors": processors,
            "ingest": ingest,
            "fixed_rate_processors": fixed_processors,
            "fixed_rate_ingest": fixed_ingest,
            "ack_p50_ms_fixed_rate": fixed["ack_p50_ms"],
            "ack_p99_ms_fixed_rate": fixed["ack_p99_ms"],
            "fixed_rate_eps": fixed["eps"],
            "critical_p99_us_fixed_rate": _worst(fixed_critical, "p99"),
            "critical_sdk_p50_us": full["critical_sdk_p50_us"],
            "critical_sdk_p99_us": full["critical_sdk_p99_us"],
            "critical_sdk_events": full["critical_sdk_events"],
            "critical_sdk_unacked": full["critical_sdk_unacked"],
            "critical_sdk_p50_us_fixed_rate": fixed["critical_sdk_p50_us"],
            "critical_sdk_p99_us_fixed_rate": fixed["critical_sdk_p99_us"],
            "critical_sdk_events_fixed_rate": fixed["critical_sdk_events"],
            "write_p99_ms_fixed_rate": _scaled(_worst(fixed_write, "p99"), 1e3),
            "store_pauses": full["store_pauses"],
            "store_pauses_fixed_rate": fixed["store_pauses"],
            "throughput_eps": full["eps"],
            "cpu_us_per_event": cpu_us_per_event(full["resources"], full["eps"]),
            "cpu_us_per_event_fixed_rate": cpu_us_per_event(fixed["resources"], fixed["eps"]),
            "direct_loader_eps": best_direct["eps"],
            "direct_loader_best": {k: best_direct[k] for k in ("processes", "grouping", "concurrency")},
            "ratio_to_direct": round(full["eps"] / best_direct["eps"], 3) if best_direct["eps"] else None,
            "log_p50_ns": full["log_p50_ns"],
            "log_p99_ns": full["log_p99_ns"],
            "log_p999_ns": full["log_p999_ns"],
            "stdlib_logging_p99_ns": full["stdlib_p99_ns"],
            "stdlib_logging_p50_ns": full["stdlib_p50_ns"],
            "empty_call_p50_ns": full["empty_call_p50_ns"],
            "empty_call_p99_ns": full["empty_call_p99_ns"],
            "ack_p50_ms": full["ack_p50_ms"],
            "ack_p99_ms": full["ack_p99_ms"],
            "critical_p50_us": _worst(critical, "p50"),
            "critical_p99_us": _worst(critical, "p99"),
            "critical_events": sum(c.get("count") or 0 for c in critical),
            "write_p50_ms": _scaled(_worst(write, "p50"), 1e3),
            "write_p99_ms": _scaled(_worst(write, "p99"), 1e3),
            "ghz_submit_eps": result.get("ghz_submit", {}).get("eps"),
            "ghz_stream_eps": result.get("ghz_stream", {}).get("eps"),
            "machine": machine(),
            "git_commit": git_commit(),
            "command": " ".join(["python -m bench.pipeline", *sys.argv[1:]]),
        }
    )
    print(render_table(result))
    if args.secure:  # after the mesh is down: the modes run meshes of their own
        result["secure"] = secure.run(smoke=args.smoke)
        print(secure.render(result["secure"]))
    failures = check(result, ghz=not args.no_ghz) + (result.get("secure") or {}).get("failures", [])
    if args.keep_logs or failures:
        print(f"services' logs and stats: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    if failures:
        print("the run failed its checks; no results written:\n  " + "\n  ".join(failures))
        return 1
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"pipeline-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / ("smoke-latest.json" if args.smoke else "latest.json")).write_text(json.dumps(result, indent=2))
    if not args.smoke:
        with PIPELINE_RUNS.open("a") as runs:
            runs.write(json.dumps(run_record(result)) + "\n")
        if not args.no_readme:
            update_readme(result)
            update_readme(result, "<!-- bench:runs:start -->", "<!-- bench:runs:end -->", render_runs(_read_runs()))
            update_readme(
                result, "<!-- bench:saturday:start -->", "<!-- bench:saturday:end -->", render_saturday(result)
            )
            update_readme(
                result,
                "<!-- bench:budget:start -->",
                "<!-- bench:budget:end -->",
                f"```\n{result['latency_budget']['table']}\n```\n\nFrom the {result['latency_budget']['spans']:,} spans"
                f" of the run above (critical batches and {DEFAULT_RATIO:g} of the rest traced).",
            )
    if args.alerts:
        from bench.alerts import from_pipeline

        return from_pipeline(args)
    return 0


def check(result: dict[str, Any], *, ghz: bool) -> list[str]:
    """What makes a run's numbers unusable: missing measures, events not acknowledged, P0 events
    left unacknowledged, ghz events not stored under fresh ids."""
    failures = [f"no {k}" for k in REQUIRED_KEYS if result.get(k) is None and (ghz or not k.startswith("ghz_"))]
    for name in ("full_speed", "fixed_rate"):
        phase = result[name]
        if phase["acked"] != phase["sent"] or phase["rejected"] or phase["dropped"]:
            failures.append(
                f"{name}: {phase['sent']} events logged, {phase['acked']} acknowledged, "
                f"{phase['rejected']} rejected, {phase['dropped']} dropped"
            )
        if phase["critical_sdk_unacked"]:
            failures.append(f"{name}: {phase['critical_sdk_unacked']} P0 events never acknowledged")
        if not phase["critical_sdk_events"]:
            failures.append(f"{name}: no P0 event acknowledged in the window")
    rush = (result.get("saturday") or {}).get("bulk")
    if rush and (rush["acked"] != rush["sent"] or rush["rejected"] or rush["dropped"]):
        failures.append(f"saturday bulk: {rush['sent']} events logged, {rush['acked']} acknowledged")
    for lane, s in (result.get("lane_ack_ms") or {}).items():
        if not s["events"] or s["unacked"] or s["rejected"] or s["dropped"]:
            failures.append(
                f"saturday {lane} probe: {s['events']} events acknowledged in the window, {s['unacked']} not, "
                f"{s['rejected']} rejected, {s['dropped']} dropped"
            )
    for kind in ("submit", "stream") if ghz else ():
        g = result.get(f"ghz_{kind}") or {}
        if not g.get("acked_events"):
            failures.append(f"ghz {kind}: ingest acknowledged no events")
        elif g["stored_events"] < g["acked_events"]:
            failures.append(
                f"ghz {kind}: {g['acked_events']} events acknowledged but {g['stored_events']} distinct ids "
                "stored (ids replayed: ghz did not apply its template?)"
            )
    for d in result["direct_loader"]:
        if not d["written"]:
            failures.append(f"direct loader {d['grouping']} x{d['processes']}: nothing written in the window")
    return failures


RUN_FIELDS = (
    "started",
    "git_commit",
    "command",
    "duration_s",
    "warmup_s",
    "load_nice",
    "throughput_eps",
    "direct_loader_eps",
    "direct_loader_best",
    "ratio_to_direct",
    "fixed_rate_eps",
    "ack_p99_ms_fixed_rate",
    "critical_sdk_p99_us",
    "critical_sdk_p99_us_fixed_rate",
    "critical_p99_us",
    "critical_p99_us_fixed_rate",
    "log_p99_ns",
    "empty_call_p99_ns",
    "ghz_submit_eps",
    "ghz_stream_eps",
)


def run_record(result: dict[str, Any]) -> dict[str, Any]:
    """The line a full run appends to ``pipeline-runs.jsonl``: the headline figures, so the
    spread of runs can be shown from files."""
    record = {k: result.get(k) for k in RUN_FIELDS}
    record["cpus"] = result["machine"]["cpus"]
    return record


def _read_runs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PIPELINE_RUNS.read_text().splitlines() if line.strip()]


def _worst(summaries: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in summaries if s.get(key) is not None]
    return max(values) if values else None


def _scaled(value: float | None, by: float) -> float | None:
    return None if value is None else round(value / by, 3)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
