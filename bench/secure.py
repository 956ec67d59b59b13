"""The cost of the security controls, side by side in one run: the same mesh and load in three
modes.

    python -m bench.secure            # 20 s measured per mode
    python -m bench.secure --smoke    # a few seconds per mode (CI)

Modes: ``insecure`` (plaintext, no tokens, no digests), ``digests`` (plaintext, digest chains
on: the cost of tamper evidence alone) and ``secure`` (TLS everywhere, mTLS to processors,
tokens checked per call, rate limits, redaction and digests). Each mode runs its own mesh (one
ingest, two processors) on its own empty keyspace and ports, driven by one SDK client in this
process at full speed with a bounded backlog; it reports events/s, the SDK's ack latency
(p50, p99: from log() to the ack) and the CPU time the services spent per event. The pure cost
of a digest (canonical encoding, leaf hash and Merkle root, per event) is measured in process.
Results go to ``bench/results/secure-latest.json`` (``secure-smoke-latest.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout, infra
from auditmesh.metrics import percentile
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.security.certs import channel_credentials, create_material
from auditmesh.security.digests import leaf_hash, merkle_root
from auditmesh.security.tokens import issue_token
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb
from bench.report import BENCH_REDIS_URL, RESULTS, git_commit, machine, update_readme

__all__ = ["main", "run"]

KEYSPACE = "auditmesh_bench_secure"
MODES = ("insecure", "digests", "secure")


def _cpu_s(supervisor: Supervisor, names: list[str]) -> float:
    total = 0.0
    for name in names:
        pid = supervisor.pid(name)
        if pid is not None:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _digest_us_per_event(samples: int = 20_000) -> float:
    events = list(Synthetic(weddings=50, seed=3).events(500))
    batch = []
    for kw in events:
        ev = pb.Event(event_id=f"d-{len(batch)}", event_type=str(kw["event_type"]), user_id=str(kw["user_id"]))
        ev.attributes.update({"k": "v" * 40})
        batch.append(ev)
    started = time.perf_counter()
    done = 0
    while done < samples:
        merkle_root([leaf_hash(ev) for ev in batch])
        done += len(batch)
    return (time.perf_counter() - started) / done * 1e6


def _endless(synthetic: Synthetic) -> Iterator[dict[str, Any]]:
    while True:
        yield from synthetic.events(50_000)


def _run_mode(mode: str, duration: float, warmup: float, base_port: int, security_dir: Path) -> dict[str, Any]:
    keyspace = f"{KEYSPACE}_{mode}"
    drop_keyspace(StoreConfig(keyspace=keyspace))
    create_schema(StoreConfig(keyspace=keyspace))
    redis_url = os.environ.get("AUDITMESH_BENCH_REDIS_URL", BENCH_REDIS_URL)
    env = {"AUDITMESH_TOKEN_KEY": "bench", "AUDITMESH_REDIS_URL": redis_url, "AUDITMESH_DIGESTS": "0"}
    client_options: dict[str, Any] = {}
    if mode in ("digests", "secure"):
        env["AUDITMESH_DIGESTS"] = "1"
    if mode == "secure":
        env["AUDITMESH_SECURITY_DIR"] = str(security_dir)
        env["AUDITMESH_RATE_EVENTS_PER_S"] = "1000000"
        env["AUDITMESH_RATE_EVENTS_BURST"] = "2000000"
        client_options = {
            "token": issue_token(security_dir, "bench", ["ingest:write"]),
            "credentials": channel_credentials(security_dir),
        }
    layout = MeshLayout(
        ingest_port=base_port,
        processor_base_port=base_port + 10,
        processors=2,
        query_port=base_port + 20,
        keyspace=keyspace,
        monitor=False,
        metrics_port_offset=0,
        extra_env=env,
    )
    supervisor = Supervisor(Path(tempfile.mkdtemp(prefix=f"auditmesh-bench-{mode}-")))
    names = ["ingest", "processor-0", "processor-1"]
    synthetic = Synthetic(weddings=200, seed=11)
    try:
        layout.start(supervisor)
        client = AuditClient(layout.ingest_target, source_service="bench", record_ack_latency=True, **client_options)
        events = _endless(synthetic)
        measuring_from = time.monotonic() + warmup
        stop_at = measuring_from + duration
        acked_at_start = cpu_at_start = None
        while time.monotonic() < stop_at:
            if acked_at_start is None and time.monotonic() >= measuring_from:
                acked_at_start, cpu_at_start = client.stats.acked, _cpu_s(supervisor, names)
                if client.ack_latency_ns is not None:
                    client.ack_latency_ns.clear()
            if client.stats.pending > 20_000:
                time.sleep(0.002)
                continue
            for _ in range(200):
                client.log(**next(events))
        acked = client.stats.acked - (acked_at_start or 0)
        cpu = _cpu_s(supervisor, names) - (cpu_at_start or 0.0)
        latencies = sorted(client.ack_latency_ns or [0])
        client.close(timeout=60)
        final = client.stats
        return {
            "mode": mode,
            "events_per_s": round(acked / duration),
            "ack_p50_ms": round((percentile(latencies, 50) or 0) / 1e6, 2),
            "ack_p99_ms": round((percentile(latencies, 99) or 0) / 1e6, 2),
            "service_cpu_us_per_event": round(cpu / max(acked, 1) * 1e6, 1),
            "acked": acked,
            "unacked_at_close": final.pending,
            "rejected": final.rejected,
            "dropped": final.dropped,
        }
    finally:
        layout.stop(supervisor)
        drop_keyspace(StoreConfig(keyspace=keyspace))


def run(*, smoke: bool, base_port: int = 23651) -> dict[str, Any]:
    """Measure every mode; returns the result (also written to bench/results)."""
    infra("up")
    duration, warmup = (3.0, 1.0) if smoke else (20.0, 5.0)
    security_dir = Path(tempfile.mkdtemp(prefix="auditmesh-bench-security-"))
    create_material(security_dir)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "smoke": smoke,
        "duration_s": duration,
        "commit": git_commit(),
        "machine": machine(),
        "digest_us_per_event_in_process": round(_digest_us_per_event(), 2),
        "modes": [_run_mode(mode, duration, warmup, base_port + 100 * i, security_dir) for i, mode in enumerate(MODES)],
    }
    result["failures"] = [
        f"{m['mode']}: {m['acked']} acknowledged in the window, {m['unacked_at_close']} unacknowledged at close,"
        f" {m['rejected']} rejected, {m['dropped']} dropped"
        for m in result["modes"]
        if not m["acked"] or m["unacked_at_close"] or m["rejected"] or m["dropped"]
    ]
    if not result["failures"]:  # only a passing run writes results
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "secure-smoke-latest.json" if smoke else "secure-latest.json"
        (RESULTS / name).write_text(json.dumps(result, indent=2))
        if not smoke:
            update_readme(
                result,
                "<!-- bench:secure:start -->",
                "<!-- bench:secure:end -->",
                render(result) + f"\n\nRun {result['started']} at commit `{result['commit'][:10]}`"
                " (`python -m bench.secure`, 20 s measured per mode after 5 s of warm-up, one SDK client at"
                " full speed, one ingest and two processors per mode).",
            )
    return result


def render(result: dict[str, Any]) -> str:
    rows = ["| mode | events/s | ack p50 | ack p99 | service CPU per event |", "| --- | --- | --- | --- | --- |"]
    for m in result["modes"]:
        rows.append(
            f"| {m['mode']} | {m['events_per_s']:,} | {m['ack_p50_ms']} ms | {m['ack_p99_ms']} ms |"
            f" {m['service_cpu_us_per_event']} us |"
        )
    rows.append(f"\nA digest in process: {result['digest_us_per_event_in_process']} us per event.")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="a few seconds per mode, for CI")
    parser.add_argument("--base-port", type=int, default=23651, help="ports of the three meshes start here")
    args = parser.parse_args()
    result = run(smoke=args.smoke, base_port=args.base_port)
    print(render(result))
    if result["failures"]:
        print("the run failed its checks; no results written:\n  " + "\n  ".join(result["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
