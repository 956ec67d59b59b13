"""The pipeline benchmark: the real mesh against its baselines, in one run.

    python -m bench.pipeline                 # full run (60 s measured at full speed), ~4 min
    python -m bench.pipeline --smoke         # seconds; what CI runs so the benchmark cannot rot

Phases, one after another on the same machine: (1) the mesh (Cassandra, Redis, ingest, N
processors, query as separate processes) driven by SDK clients in several processes at full
speed, then at a fixed rate; (2) the direct cassandra-driver loader into the same tables;
(3) ghz against ingest's Submit and Stream. Writes ``bench/results/pipeline-<time>.json`` and
``bench/results/latest.json``, prints the table, and rewrites the README's performance section.
Each run drops and recreates its own keyspace (``auditmesh_bench``) first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout, infra
from auditmesh.metrics import percentile
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from bench.direct_loader import run_loader
from bench.loadgen import run_client
from bench.report import (
    RESULTS,
    cassandra_pid,
    git_commit,
    machine,
    redis_pid,
    render_table,
    update_readme,
    wait_for_quiet_store,
)

KEYSPACE = "auditmesh_bench"
REQUIRED_KEYS = (
    "throughput_eps",
    "direct_loader_eps",
    "log_p50_ns",
    "log_p99_ns",
    "stdlib_logging_p99_ns",
    "ack_p99_ms",
    "critical_p99_us",
    "write_p99_ms",
    "ghz_submit_eps",
    "ghz_stream_eps",
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
    results = [conn.recv() for _, conn in spawned]
    resources = sampler.stop()
    for proc, _ in spawned:
        proc.join(30)
    eps = sum(r["acked_in_window"] / r["window_s"] for r in results)
    log_ns = [v for r in results for v in r["log_ns"]]
    stdlib_ns = [v for r in results for v in r["stdlib_ns"]]
    empty_ns = [v for r in results for v in r["empty_ns"]]
    ack_ns = [v for r in results for v in r["ack_ns"]]
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
        "resources": resources,
    }


def run_direct_phase(*, processes: int, grouping: str, duration_s: float, concurrency: int) -> dict[str, Any]:
    start_at = time.time() + 2.0
    spawned = [
        _spawn(
            run_loader,
            {
                "keyspace": KEYSPACE,
                "index": i,
                "grouping": grouping,
                "duration_s": duration_s,
                "concurrency": concurrency,
                "start_at": start_at,
            },
        )
        for i in range(processes)
    ]
    results = [conn.recv() for _, conn in spawned]
    for proc, _ in spawned:
        proc.join(30)
    eps = sum(r["written"] / r["elapsed_s"] for r in results)
    return {"eps": round(eps, 1), "processes": processes, "grouping": grouping, "concurrency": concurrency}


def _ghz_data(path: Path, batches_per_message: int, batch_events: int) -> None:
    synthetic = Synthetic(weddings=1000, seed=900)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    import auditpb.v1.audit_pb2 as pb

    def batch(n: int) -> dict[str, Any]:
        events = []
        for i, kw in enumerate(synthetic.events(batch_events)):
            events.append(
                {
                    **kw,
                    "event_id": f"ghz-{n}-{i}",
                    "occurred_at": now,
                    "severity": pb.Severity.Name(kw["severity"]),
                    "outcome": pb.Outcome.Name(kw["outcome"]),
                }
            )
        return {"batch_id": f"ghz-{n}", "events": events}

    data: Any = batch(0) if batches_per_message == 1 else [batch(n) for n in range(batches_per_message)]
    path.write_text(json.dumps(data))


def run_ghz(kind: str, target: str, workdir: Path, duration: str, batch_events: int, messages: int) -> dict[str, Any]:
    data = workdir / f"ghz-{kind}-data.json"
    out = RESULTS / f"ghz-{kind}.json"
    _ghz_data(data, messages, batch_events)
    subprocess.run([str(GHZ), kind, target, str(data), str(out), duration], check=True, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    total_s = report["total"] / 1e9
    lat = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or []}
    per_call_events = batch_events * messages
    return {
        "eps": round(ok * per_call_events / total_s, 1),
        "calls_ok": ok,
        "count": report.get("count"),
        "errors": report.get("errorDistribution"),
        "events_per_call": per_call_events,
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
    parser.add_argument("--no-ghz", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs and stats after the run")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.warmup, args.clients = 3.0, 1.0, 1
    ghz_duration = "3s" if args.smoke else "20s"
    direct_duration = 3.0 if args.smoke else args.duration / 3

    infra("up")
    # Every run starts from an empty keyspace: what earlier runs left would make this run's
    # compactions (and so its numbers) depend on how many runs came before.
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-bench-"))
    layout = MeshLayout(
        ingest_port=23051,
        processor_base_port=23061,
        processors=args.processors,
        query_port=23071,
        keyspace=KEYSPACE,
        extra_env={"AUDITMESH_TOKEN_KEY": "bench"},
    )
    supervisor = Supervisor(run_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "linger_ms": args.linger_ms,
    }
    quiet_s = 10.0 if args.smoke else 180.0
    waits: list[float] = []
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
        )
        if not args.no_ghz:
            result["ghz_submit"] = run_ghz("submit", layout.ingest_target, run_dir, ghz_duration, 500, 1)
            result["ghz_stream"] = run_ghz("stream", layout.ingest_target, run_dir, ghz_duration, 500, 10)
    finally:
        layout.stop(supervisor)
    # Published at exit: the fixed-rate phase (reservoirs were reset when it began).
    fixed_processors = [supervisor.stats(layout.processor(i).name) or {} for i in range(layout.processors)]
    write = [s.get("write_us", {}) for s in processors]
    critical = [s.get("critical_us", {}) for s in processors]
    fixed_critical = [s.get("critical_us", {}) for s in fixed_processors]
    fixed_write = [s.get("write_us", {}) for s in fixed_processors]
    waits.append(wait_for_quiet_store(quiet_s))
    direct = [
        run_direct_phase(processes=p, grouping=g, duration_s=direct_duration, concurrency=16)
        for g in ("partition", "replica")
        for p in ((2,) if args.smoke else (1, 2, 3))
    ]
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
            "ack_p50_ms_fixed_rate": fixed["ack_p50_ms"],
            "ack_p99_ms_fixed_rate": fixed["ack_p99_ms"],
            "fixed_rate_eps": fixed["eps"],
            "critical_p99_us_fixed_rate": _worst(fixed_critical, "p99"),
            "write_p99_ms_fixed_rate": _scaled(_worst(fixed_write, "p99"), 1e3),
            "throughput_eps": full["eps"],
            "direct_loader_eps": best_direct["eps"],
            "ratio_to_direct": round(full["eps"] / best_direct["eps"], 3) if best_direct["eps"] else None,
            "log_p50_ns": full["log_p50_ns"],
            "log_p99_ns": full["log_p99_ns"],
            "log_p999_ns": full["log_p999_ns"],
            "stdlib_logging_p99_ns": full["stdlib_p99_ns"],
            "stdlib_logging_p50_ns": full["stdlib_p50_ns"],
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
            "command": "python -m bench.pipeline" + (" --smoke" if args.smoke else ""),
        }
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"pipeline-{stamp}.json").write_text(json.dumps(result, indent=2))
    missing = [k for k in REQUIRED_KEYS if k not in result]
    assert not missing, f"result lacks {missing}"
    (RESULTS / ("smoke-latest.json" if args.smoke else "latest.json")).write_text(json.dumps(result, indent=2))
    print(render_table(result))
    if not args.smoke and not args.no_readme:
        update_readme(result)
    if args.keep_logs:
        print(f"services' logs and stats: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _worst(summaries: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in summaries if s.get(key) is not None]
    return max(values) if values else None


def _scaled(value: float | None, by: float) -> float | None:
    return None if value is None else round(value / by, 3)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
