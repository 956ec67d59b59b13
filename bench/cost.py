"""Cost per event: CPU per hop, each hop's ceiling alone, and the capacity model built from them.

    python -m bench.cost            # full run, ~6 min: writes bench/results/cost-latest.json and the README section
    python -m bench.cost --smoke    # seconds per phase; writes cost-smoke-latest.json only
    python -m bench.cost --sdk-only # phase 1 alone (no Cassandra, no Redis); prints, writes nothing
    python -m bench.cost --ingest-only  # phase 2 alone (Cassandra for the calendar); prints, writes nothing

Phases, one after another on the same machine:

1. **SDK client alone**: one process, one thread logging pre-built events (no generator in the
   loop) into a stand-in ingest that acknowledges every batch at once (``bench.standin``). Its
   CPU time over the window, divided by the events acknowledged, is the SDK's cost per event.
2. **Ingest alone**: the real ingest process routing to two stand-in processors that answer at
   once, driven by two such clients. Its CPU per event gives its ceiling on one core.
3. **The mesh with 1, 2 and 3 processors**: the real services, Cassandra and Redis, driven at
   full speed by two clients, each from an empty keyspace after Cassandra has gone quiet. CPU
   per acknowledged event for every process kind, and what one more processor adds.
4. **The direct cassandra-driver loader** (two processes, replica-grouped batches) into the same
   tables, for the processors' rate against the store's.

The capacity model divides a target rate by what one core of each kind carries, at 70% use
(``--utilisation``): Python services are bound to one core per process, so processes = cores.
Only a run in which every phase acknowledged events writes results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout, infra
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import ServiceProcess, Supervisor, wait_healthy
from auditmesh.synthetic import Synthetic
from bench.report import BENCH_REDIS_URL, RESULTS, cassandra_pid, git_commit, machine, redis_pid, update_readme

KEYSPACE = "auditmesh_bench"
PORT = 31051  # no test mesh uses 31000-31200, whatever its slot
KIND_ORDER = ("sdk_client", "ingest", "processor", "query", "cassandra", "redis")


def kind_of(process: str) -> str:
    """The process kind a sampled process belongs to (``processor-1`` -> ``processor``)."""
    if process.startswith("client-"):
        return "sdk_client"
    return process.split("-", 1)[0]


def cpu_us_per_event(resources: dict[str, dict[str, float]], eps: float) -> dict[str, float | None]:
    """CPU microseconds per acknowledged event by process kind, from a phase's sampled processes
    (``cpu_cores`` each, over the same window as ``eps``)."""
    if not eps:
        return {}
    cores: dict[str, float] = {}
    for name, sample in resources.items():
        value = sample.get("cpu_cores")
        if value is None or math.isnan(value):
            continue
        cores[kind_of(name)] = cores.get(kind_of(name), 0.0) + value
    return {kind: round(c * 1e6 / eps, 2) for kind, c in sorted(cores.items(), key=lambda kv: kind_rank(kv[0]))}


def kind_rank(kind: str) -> int:
    """A process kind's place in the CPU tables (unknown kinds last)."""
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _lean_client(
    conn: Connection, *, target: str, index: int, warmup_s: float, duration_s: float, start_at: float
) -> None:
    """One AuditClient logging pre-built events from one thread as fast as the pipeline takes them."""
    events = list(Synthetic(weddings=1000, seed=300 + index).events(20_000))
    n = len(events)
    client = AuditClient(target, source_service=f"bench-cost-{index}")
    while time.time() < start_at:
        time.sleep(0.005)
    measure_from = time.monotonic() + warmup_s
    end = measure_from + duration_s
    acked0: int | None = None
    cpu0 = 0.0
    sent = 0
    while True:
        if sent % 500 == 0:
            now = time.monotonic()
            if now >= end:
                break
            if acked0 is None and now >= measure_from:
                acked0, cpu0, measure_from = client.stats.acked, time.process_time(), now
            if client.stats.pending > 50_000:
                time.sleep(0.002)  # wait for the pipeline instead of overflowing the buffer
                continue
        client.log(**events[sent % n])
        sent += 1
    acked1, cpu1, window = client.stats.acked, time.process_time(), time.monotonic() - measure_from
    client.close(timeout=60)
    stats = client.stats
    conn.send(
        {
            "acked_in_window": acked1 - (acked0 or 0),
            "cpu_s": cpu1 - cpu0,
            "window_s": window,
            "sent": sent,
            "acked": stats.acked,
            "rejected": stats.rejected,
            "dropped": stats.dropped,
        }
    )
    conn.close()


def _drive(target: str, clients: int, warmup_s: float, duration_s: float, watch: dict[str, int]) -> dict[str, Any]:
    """Run ``clients`` lean clients against ``target``; sample the processes in ``watch`` and the
    clients over the measured window."""
    from bench.pipeline import ProcessSampler

    ctx = mp.get_context("spawn")
    start_at = time.time() + 2.0
    spawned = []
    for i in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        kwargs = {"target": target, "index": i, "warmup_s": warmup_s, "duration_s": duration_s, "start_at": start_at}
        proc = ctx.Process(target=_lean_client, args=(child,), kwargs=kwargs, daemon=True)
        proc.start()
        spawned.append((proc, parent))
    sampler = ProcessSampler()
    for name, pid in watch.items():
        sampler.watch(name, pid)
    for i, (proc, _) in enumerate(spawned):
        sampler.watch(f"client-{i}", proc.pid or 0)
    time.sleep(max(0.0, start_at - time.time()) + warmup_s)
    sampler.start()
    results = [conn.recv() for _, conn in spawned]
    resources = sampler.stop()
    for proc, _ in spawned:
        proc.join(30)
    eps = sum(r["acked_in_window"] / r["window_s"] for r in results)
    acked = sum(r["acked_in_window"] for r in results)
    return {
        "eps": round(eps, 1),
        "clients": clients,
        "sent": sum(r["sent"] for r in results),
        "acked": sum(r["acked"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        # the clients' own process CPU (all threads, gRPC's included) per event they got acked
        "sdk_cpu_us_per_event": round(sum(r["cpu_s"] for r in results) * 1e6 / acked, 2) if acked else None,
        "resources": resources,
        "cpu_us_per_event": cpu_us_per_event(resources, eps),
    }


def _standin(kind: str, port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"standin-{kind}-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bench.standin", kind, str(port)], stdout=log, stderr=log)
    wait_healthy_port(port)
    return proc


def wait_healthy_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on :{port}")


def sdk_alone(log_dir: Path, warmup_s: float, duration_s: float) -> dict[str, Any]:
    ingest = _standin("ingest", PORT + 90, log_dir)
    try:
        return _drive(f"127.0.0.1:{PORT + 90}", 1, warmup_s, duration_s, {"standin-ingest": ingest.pid})
    finally:
        ingest.terminate()
        ingest.wait(10)


def ingest_alone(supervisor: Supervisor, log_dir: Path, warmup_s: float, duration_s: float) -> dict[str, Any]:
    ports = [PORT + 91, PORT + 92]
    standins = [_standin("processor", p, log_dir) for p in ports]
    proc = ServiceProcess(
        "ingest",
        "services.ingest",
        PORT + 80,
        {
            "AUDITMESH_KEYSPACE": KEYSPACE,
            "AUDITMESH_INGEST_PORT": str(PORT + 80),
            "AUDITMESH_INGEST_METRICS_PORT": "0",
            "AUDITMESH_PROCESSORS": ",".join(f"127.0.0.1:{p}" for p in ports),
            "AUDITMESH_REDIS_URL": BENCH_REDIS_URL,
        },
    )
    try:
        supervisor.start(proc)
        wait_healthy(proc.target, 60, supervisor.log_file(proc.name))
        result = _drive(proc.target, 2, warmup_s, duration_s, {"ingest": supervisor.pid(proc.name) or 0})
        us = result["cpu_us_per_event"].get("ingest")
        result["one_core_eps"] = round(1e6 / us) if us else None
        return result
    finally:
        supervisor.stop(proc.name)
        for s in standins:
            s.terminate()
            s.wait(10)


def mesh_with(
    processors: int, supervisor: Supervisor, warmup_s: float, duration_s: float, quiet_s: float
) -> dict[str, Any]:
    from bench.pipeline import fresh_keyspace

    waited = fresh_keyspace(quiet_s)
    layout = MeshLayout(
        ingest_port=PORT,
        processor_base_port=PORT + 10,
        processors=processors,
        query_port=PORT + 20,
        keyspace=KEYSPACE,
        monitor=False,
        metrics_port_offset=0,
        extra_env={"AUDITMESH_REDIS_URL": BENCH_REDIS_URL},
    )
    layout.start(supervisor)
    try:
        watch = {p.name: supervisor.pid(p.name) or 0 for p in layout.services() if p.name != "query"}
        for name, pid in (("cassandra", cassandra_pid()), ("redis", redis_pid())):
            if pid:
                watch[name] = pid
        result = _drive(layout.ingest_target, 2, warmup_s, duration_s, watch)
    finally:
        layout.stop(supervisor)
    result["processors"] = processors
    result["waited_for_quiet_store_s"] = waited
    return result


def capacity(costs: dict[str, float | None], rates: tuple[int, ...], utilisation: float) -> dict[str, dict[str, int]]:
    """Cores (= processes for the Python services) each kind needs for each sustained rate."""
    model: dict[str, dict[str, int]] = {}
    for rate in rates:
        model[str(rate)] = {
            kind: math.ceil(rate * us / 1e6 / utilisation) for kind, us in costs.items() if us is not None and us > 0
        }
    return model


def render(r: dict[str, Any]) -> str:
    costs = r["cpu_us_per_event"]
    lines = [
        "| process kind | CPU per acknowledged event | one core carries |",
        "| --- | --- | --- |",
    ]
    for kind, us in costs.items():
        lines.append(f"| {kind} | {us:,.1f} us | {1e6 / us:,.0f} ev/s |" if us else f"| {kind} | - | - |")
    lines += [
        "",
        "| hop alone | events/s | CPU per event |",
        "| --- | --- | --- |",
        f"| one SDK client, one thread, into a stand-in ingest | {r['sdk_alone']['eps']:,.0f} |"
        f" {r['sdk_alone']['sdk_cpu_us_per_event']:,.1f} us (whole client process) |",
        f"| one ingest process, stand-in processors answering at once | {r['ingest_alone']['eps']:,.0f}"
        f" (one core: {r['ingest_alone']['one_core_eps'] or 0:,.0f}) |"
        f" {r['ingest_alone']['cpu_us_per_event'].get('ingest') or 0:,.1f} us |",
    ]
    for m in r["mesh"]:
        lines.append(
            f"| mesh with {m['processors']} processor{'s' if m['processors'] > 1 else ''} into Cassandra"
            f" | {m['eps']:,.0f} | processors {m['cpu_us_per_event'].get('processor') or 0:,.1f} us |"
        )
    lines.append(
        f"| direct cassandra-driver loader, {r['direct_loader']['processes']} processes"
        f" | {r['direct_loader']['eps']:,.0f} | |"
    )
    lines += [
        "",
        f"| sustained rate | {' | '.join(r['capacity_kinds'])} |",
        "| --- |" + " --- |" * len(r["capacity_kinds"]),
    ]
    for rate, need in r["capacity"].items():
        lines.append(f"| {int(rate):,} ev/s | " + " | ".join(str(need.get(k, "-")) for k in r["capacity_kinds"]) + " |")
    added = ", ".join(f"{d:+,.0f} ev/s" for d in r["processor_adds_eps"])
    lines += [
        "",
        f"Cores (processes, for the Python services) at {r['utilisation']:.0%} use, from the CPU per event of the"
        f" mesh with {r['model_from_processors']} processors and the SDK alone. One more processor added: {added}"
        f" ({' -> '.join(str(m['processors']) for m in r['mesh'])})."
        f" Command: `{r['command']}`, {r['started']}, commit {r['git_commit'][:10]}.",
    ]
    return "\n".join(lines)


def check(r: dict[str, Any]) -> list[str]:
    phases = [("sdk alone", r["sdk_alone"]), ("ingest alone", r["ingest_alone"])]
    phases += [(f"mesh x{m['processors']}", m) for m in r["mesh"]]
    failures = []
    for name, p in phases:
        if not p["eps"]:
            failures.append(f"{name}: nothing acknowledged in the window")
        if p["acked"] != p["sent"] or p["rejected"] or p["dropped"]:
            failures.append(
                f"{name}: {p['sent']} logged, {p['acked']} acknowledged,"
                f" {p['rejected']} rejected, {p['dropped']} dropped"
            )
    if not r["direct_loader"]["written"]:
        failures.append("direct loader: nothing written")
    return failures


def main() -> int:
    from bench.pipeline import run_direct_phase

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--utilisation", type=float, default=0.7)
    parser.add_argument("--processors", default="1,2,3", help="processor counts of the mesh phases")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--sdk-only", action="store_true", help="only the SDK client alone; print its result")
    parser.add_argument(
        "--ingest-only", action="store_true", help="only one ingest process with stand-in processors; print its result"
    )
    args = parser.parse_args()
    counts = [int(p) for p in args.processors.split(",")]
    if args.smoke:
        args.duration, args.warmup, counts = 2.0, 1.0, [1, 2]
    if args.sdk_only:
        sdk = sdk_alone(Path(tempfile.mkdtemp(prefix="auditmesh-cost-")), args.warmup, args.duration)
        print(f"sdk alone: {sdk['eps']:,.0f} ev/s, {sdk['sdk_cpu_us_per_event']} us/event", flush=True)
        return 0 if sdk["eps"] and sdk["acked"] == sdk["sent"] else 1
    if args.ingest_only:
        infra("up")
        create_schema(StoreConfig(keyspace=KEYSPACE))  # ingest reads the wedding calendar from it
        log_dir = Path(tempfile.mkdtemp(prefix="auditmesh-cost-"))
        ingest = ingest_alone(Supervisor(log_dir), log_dir, args.warmup, args.duration)
        print(f"ingest alone: {ingest['eps']:,.0f} ev/s, {ingest['cpu_us_per_event']}", flush=True)
        return 0 if ingest["eps"] and ingest["acked"] == ingest["sent"] else 1
    quiet_s = 10.0 if args.smoke else 120.0
    infra("up")
    log_dir = Path(tempfile.mkdtemp(prefix="auditmesh-cost-"))
    supervisor = Supervisor(log_dir)
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sdk = sdk_alone(log_dir, args.warmup, args.duration)
    print(f"sdk alone: {sdk['eps']:,.0f} ev/s, {sdk['sdk_cpu_us_per_event']} us/event", flush=True)
    ingest = ingest_alone(supervisor, log_dir, args.warmup, args.duration)
    print(f"ingest alone: {ingest['eps']:,.0f} ev/s, {ingest['cpu_us_per_event']}", flush=True)
    mesh = []
    for n in counts:
        mesh.append(mesh_with(n, supervisor, args.warmup, args.duration, quiet_s))
        print(f"mesh x{n}: {mesh[-1]['eps']:,.0f} ev/s, {mesh[-1]['cpu_us_per_event']}", flush=True)
    from bench.pipeline import fresh_keyspace

    fresh_keyspace(quiet_s)
    direct = run_direct_phase(
        processes=2, grouping="replica", warmup_s=args.warmup, duration_s=args.duration, concurrency=16, nice=0
    )
    print(f"direct loader: {direct['eps']:,.0f} ev/s", flush=True)
    # The model's costs: the services and the store from the mesh with two processors (or the
    # largest measured), the SDK from the client alone (no generator, no bench bookkeeping).
    base = next((m for m in mesh if m["processors"] == 2), mesh[-1])
    costs = {k: v for k, v in base["cpu_us_per_event"].items() if k != "sdk_client"}
    costs = {"sdk_client": sdk["sdk_cpu_us_per_event"], **costs}
    result: dict[str, Any] = {
        "started": started,
        "smoke": args.smoke,
        "duration_s": args.duration,
        "utilisation": args.utilisation,
        "sdk_alone": sdk,
        "ingest_alone": ingest,
        "mesh": mesh,
        "direct_loader": direct,
        "cpu_us_per_event": costs,
        "model_from_processors": base["processors"],
        "processor_adds_eps": [round(b["eps"] - a["eps"], 1) for a, b in zip(mesh, mesh[1:], strict=False)],
        "mesh_to_direct": round(max(m["eps"] for m in mesh) / direct["eps"], 3) if direct["eps"] else None,
        "capacity": capacity(costs, (50_000, 100_000), args.utilisation),
        "capacity_kinds": [k for k in costs if costs[k]],
        "machine": machine(),
        "git_commit": git_commit(),
        "command": " ".join(["python -m bench.cost", *sys.argv[1:]]),
    }
    print(render(result))
    failures = check(result)
    if failures:
        print(f"the run failed its checks; no results written (logs in {log_dir}):\n  " + "\n  ".join(failures))
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "cost-smoke-latest.json" if args.smoke else "cost-latest.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    if not args.smoke and not args.no_readme:
        update_readme(result, "<!-- bench:cost:start -->", "<!-- bench:cost:end -->", render(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
