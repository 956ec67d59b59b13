"""What tracing costs, side by side in one run: sustained throughput and the caller's log()
cost with tracing off, at the default ratio, and at 100%.

    python -m bench.tracing_cost            # about 10 minutes; writes bench/results/tracing-latest.json
    python -m bench.tracing_cost --smoke    # a few seconds per phase

Each configuration restarts the mesh with its OTEL_* variables (spans go over OTLP to the local
Jaeger, which the run starts), and the SDK load processes trace their batches as an application
with a tracer provider would. The phases run in the order off, default, 100%, 100%, default,
off, each from an empty keyspace and a quiet store, so that drift of the shared host falls on
every configuration alike; each configuration's figure is the mean of its two phases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from auditmesh.config import StoreConfig
from auditmesh.mesh import JAEGER_SCRIPT, MeshLayout, infra
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import Supervisor
from auditmesh.telemetry.tracing import DEFAULT_RATIO
from bench.pipeline import run_pipeline_phase
from bench.report import BENCH_REDIS_URL, RESULTS, git_commit, machine, update_readme, wait_for_quiet_store

KEYSPACE = "auditmesh_bench"
OUT = RESULTS / "tracing-latest.json"
_OTLP = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
    "OTEL_EXPORTER_OTLP_INSECURE": "true",
}
CONFIGS: dict[str, dict[str, str]] = {
    "off": {"OTEL_TRACES_EXPORTER": "none"},
    "default": {**_OTLP, "OTEL_TRACES_SAMPLER_ARG": str(DEFAULT_RATIO)},
    "all": {**_OTLP, "OTEL_TRACES_SAMPLER_ARG": "1.0"},
}
LABELS = {"off": "tracing off", "default": f"default ratio ({DEFAULT_RATIO:g})", "all": "every batch (100%)"}


def _phase(name: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    env = CONFIGS[name]
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    layout = MeshLayout(
        ingest_port=23151,
        processor_base_port=23161,
        processors=args.processors,
        query_port=23171,
        keyspace=KEYSPACE,
        extra_env={"AUDITMESH_TOKEN_KEY": "bench", "AUDITMESH_REDIS_URL": BENCH_REDIS_URL, **env},
    )
    supervisor = Supervisor(run_dir / name)
    try:
        layout.start(supervisor)
        wait_for_quiet_store(args.quiet)
        phase = run_pipeline_phase(
            layout,
            supervisor,
            clients=args.clients,
            streams=2,
            warmup_s=args.warmup,
            duration_s=args.duration,
            rate=0,
            log_dir=str(run_dir),
            trace_env=env if name != "off" else None,
        )
    finally:
        layout.stop(supervisor)
    return {"config": name, "eps": phase["eps"], "log_p99_ns": phase["log_p99_ns"], "log_p50_ns": phase["log_p50_ns"]}


def render(data: dict[str, Any]) -> str:
    rows = [
        "| tracing | sustained acked throughput | vs off | `log()` p50 | `log()` p99 |",
        "| --- | --- | --- | --- | --- |",
    ]
    off = data["configs"]["off"]["eps"]
    for name in ("off", "default", "all"):
        c = data["configs"][name]
        change = "" if name == "off" else f"{(c['eps'] - off) / off * 100:+.1f}%"
        rows.append(
            f"| {LABELS[name]} | {c['eps']:,.0f} ev/s ({' and '.join(f'{e:,.0f}' for e in c['phases'])}) | {change} |"
            f" {c['log_p50_ns']:,.0f} ns | {c['log_p99_ns']:,.0f} ns |"
        )
    m = data["machine"]
    rows.append("")
    rows.append(
        f"Phases in the order off, default, 100%, 100%, default, off, {data['duration_s']:.0f} s each after"
        f" {data['warmup_s']:.0f} s of warm-up; {m['cpus']} cores, everything on one machine (Jaeger too)."
        f" Run {data['started']} at commit `{data['commit']}` with `python -m bench.tracing_cost`."
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--quiet", type=float, default=60.0, help="most seconds to wait for a quiet store")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.warmup, args.clients, args.quiet = 3.0, 1.0, 1, 5.0
    infra("up")
    subprocess.run([str(JAEGER_SCRIPT), "up"], check=True)
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-tracing-"))
    phases = [_phase(name, args, run_dir) for name in ("off", "default", "all", "all", "default", "off")]
    configs: dict[str, Any] = {}
    for name in CONFIGS:
        mine = [p for p in phases if p["config"] == name]
        configs[name] = {
            "eps": statistics.mean(p["eps"] for p in mine),
            "phases": [p["eps"] for p in mine],
            "log_p50_ns": statistics.mean(p["log_p50_ns"] or 0 for p in mine),
            "log_p99_ns": statistics.mean(p["log_p99_ns"] or 0 for p in mine),
        }
    failed = [p["config"] for p in phases if not p["eps"]]
    data = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "smoke": args.smoke,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "phases": phases,
        "configs": configs,
    }
    print(render(data))
    if failed:
        print(f"no events acknowledged in: {', '.join(failed)}; nothing written")
        return 1
    if not args.smoke:
        OUT.write_text(json.dumps(data, indent=2) + "\n")
        if not args.no_readme:
            update_readme(data, "<!-- bench:tracing:start -->", "<!-- bench:tracing:end -->", render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
