"""Threat detection's benchmark: alert latency (event logged -> alert received by a SubscribeAlerts
subscriber), normal and P0, and what the rule pack costs in sustained throughput, rules on vs
off side by side in one run.

    python -m bench.alerts            # about 15 minutes; writes bench/results/alerts-latest.json
    python -m bench.alerts --smoke    # a few seconds per phase (what to run on a shared host)
    python -m bench.pipeline --alerts # the same phases after the pipeline benchmark
    python -m bench.alerts --eval     # evaluation alone, CPU us/event, no services (seconds)

Throughput: full-speed SDK load (bench.pipeline's load processes) with the rule pack off, on,
on, off, each phase from an empty keyspace, an empty Redis database and a quiet store; each
configuration's figure is the mean of its two phases. Latency: a probe in this process logs,
through its own SDK client, P0 events (alert: ``p0_event``) and ten failed logins for a fresh
user (alert: ``brute_force_user``, timed from the tenth), and times each to the alert reaching
its subscriber; during the rules-on full-speed phases ("saturation": a closed loop that keeps
every queue of the mesh full), at fixed rates of 50, 65 and 80% of the rules-on capacity just
measured (the load curve: up to which share of its capacity the mesh keeps alerts under
100 ms), and at a fixed moderate rate. The probe's clock is the one of log(), so the figures include the SDK's
batching, ingest, the processor's detection round, Redis pub/sub and the query service.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import redis

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.detection.evaluator import evaluate
from auditmesh.detection.rules import load_rules
from auditmesh.mesh import MeshLayout, infra
from auditmesh.metrics import percentile
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc
from auditpb.v1 import audit_pb2 as pb
from bench.cost import cpu_us_per_event, kind_rank
from bench.pipeline import run_pipeline_phase
from bench.report import BENCH_REDIS_URL, RESULTS, git_commit, machine, update_readme, wait_for_quiet_store

_SLOT = int(os.environ.get("AUDITMESH_TEST_SLOT", "0"))
"""On a shared host, a test slot's number moves the ports and keyspace, as for the tests."""
KEYSPACE = "auditmesh_bench_alerts" + (f"_{_SLOT}" if _SLOT else "")
REDIS_URL = os.environ.get("AUDITMESH_BENCH_REDIS_URL", BENCH_REDIS_URL)
OUT = RESULTS / "alerts-latest.json"
RULES = Path(__file__).resolve().parent.parent / "rules"
START, END = "<!-- bench:alerts:start -->", "<!-- bench:alerts:end -->"


_HOPS = ("to_ingest", "to_alert", "to_subscriber")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    return {"p50_ms": percentile(values, 50) if values else None, "p99_ms": percentile(values, 99) if values else None}


class Probe:
    """Logs trigger events at a steady pace and times each to its alert on a live subscription."""

    def __init__(self, layout: MeshLayout, interval_s: float) -> None:
        self._interval_s = interval_s
        self._channel = grpc.insecure_channel(layout.query_target)
        self._call = apb_grpc.AlertServiceStub(self._channel).SubscribeAlerts(apb.SubscribeAlertsRequest())
        self._call.initial_metadata()
        self._client = AuditClient(layout.ingest_target, source_service="bench-probe")
        # key -> (kind, log time of the event timed, wall clock of the first event logged)
        self._sent: dict[str, tuple[str, float, float]] = {}
        self.latency_ms: dict[str, list[float]] = {"p0": [], "normal": []}
        # Where an alert's time went, by hop (wall clock, ms): first event logged -> received by
        # ingest (the alert's trigger_received_at_us, its first event's), -> alert created by the
        # detector, -> on the subscription. A brute force's ten events are logged back to back,
        # so its hops start from the first of them and its end-to-end time from the tenth.
        self.hops_ms: dict[str, dict[str, list[float]]] = {k: {h: [] for h in _HOPS} for k in self.latency_ms}
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._tag = uuid.uuid4().hex[:6]

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        try:
            for alert in self._call:
                now, wall = time.perf_counter(), time.time()
                key = alert.user_id if alert.rule == "p0_event" else alert.group
                sent = self._sent.pop(key, None)
                if sent is not None:
                    kind, logged, logged_wall = sent
                    self.latency_ms[kind].append((now - logged) * 1000)
                    hops = self.hops_ms[kind]
                    received, created = alert.trigger_received_at_us / 1000, alert.created_at.ToMilliseconds()
                    hops["to_ingest"].append(received - logged_wall * 1000)
                    hops["to_alert"].append(created - received)
                    hops["to_subscriber"].append(wall * 1000 - created)
        except grpc.RpcError:
            pass

    def _write(self) -> None:
        n = 0
        while not self._stop.wait(self._interval_s):
            n += 1
            user = f"probe-{self._tag}-{n}"
            if n % 2:
                self._sent[user] = ("p0", time.perf_counter(), time.time())
                self._client.log("auth.account.locked", user_id=user, severity=pb.P0_CRITICAL)
                continue
            first_wall = time.time()
            for _ in range(9):
                self._client.log("auth.login.failed", user_id=user, outcome=pb.OUTCOME_FAILURE)
            self._sent[f"user_id={user}"] = ("normal", time.perf_counter(), first_wall)
            self._client.log("auth.login.failed", user_id=user, outcome=pb.OUTCOME_FAILURE)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._writer.join()
        time.sleep(1.0)  # the last alerts on their way
        self._call.cancel()
        self._client.close()
        self._channel.close()
        out: dict[str, Any] = {}
        for kind, values in self.latency_ms.items():
            values.sort()
            out[kind] = {
                "count": len(values),
                "p50_ms": percentile(values, 50) if values else None,
                "p99_ms": percentile(values, 99) if values else None,
                "hops": {hop: _percentiles(times) for hop, times in self.hops_ms[kind].items()},
            }
        out["missing"] = len(self._sent)
        return out


def _phase(name: str, rules_on: bool, args: argparse.Namespace, run_dir: Path, rate: float) -> dict[str, Any]:
    drop_keyspace(StoreConfig(keyspace=KEYSPACE))
    create_schema(StoreConfig(keyspace=KEYSPACE))
    # Correlation windows and open alerts of the previous phase (the load's users are the same in
    # every phase) would otherwise turn this phase's new alerts into updates of open ones.
    with redis.Redis.from_url(REDIS_URL) as r:  # the benchmark's own database (AUDITMESH_BENCH_REDIS_URL)
        r.flushdb()
    env = {"AUDITMESH_TOKEN_KEY": "bench", "AUDITMESH_REDIS_URL": REDIS_URL}
    if rules_on:
        env["AUDITMESH_DETECTION_RULES"] = str(RULES)
    layout = MeshLayout(
        ingest_port=23251 + 200 * _SLOT,
        processor_base_port=23261 + 200 * _SLOT,
        processors=args.processors,
        query_port=23271 + 200 * _SLOT,
        keyspace=KEYSPACE,
        extra_env=env,
    )
    supervisor = Supervisor(run_dir / name)
    probe: Probe | None = None
    try:
        layout.start(supervisor)
        wait_for_quiet_store(args.quiet)
        if rules_on:
            probe = Probe(layout, args.probe_interval)
            probe.start()
        phase = run_pipeline_phase(
            layout,
            supervisor,
            clients=args.clients,
            streams=2,
            warmup_s=args.warmup,
            duration_s=args.duration,
            rate=rate,
            log_dir=str(run_dir),
        )
        latency = probe.stop() if probe is not None else None
        probe = None
        stats = [supervisor.stats(layout.processor(i).name) or {} for i in range(layout.processors)]
    finally:
        if probe is not None:
            probe.stop()
        layout.stop(supervisor)
    detection = [s.get("detection", {}) for s in stats]
    return {
        "phase": name,
        "rules": rules_on,
        "rate": rate,
        "eps": phase["eps"],
        "latency": latency,
        "cpu_us_per_event": cpu_us_per_event(phase["resources"], phase["eps"]),
        "alerts_raised": sum(d.get("alerts_raised", 0) for d in detection),
        "dropped": sum(d.get("dropped", 0) for d in detection),
        "redis_errors": sum(d.get("redis_errors", 0) for d in detection),
    }


def _merge_latency(phases: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    counts = [p["latency"][kind] for p in phases if p["latency"]]
    values = [c for c in counts if c["count"]]
    return {
        "count": sum(c["count"] for c in counts),
        "p50_ms": max((c["p50_ms"] for c in values), default=None),
        "p99_ms": max((c["p99_ms"] for c in values), default=None),
    }


def _mean_cpu(phases: list[dict[str, Any]]) -> dict[str, float]:
    """CPU us per acknowledged event by process kind, the mean over ``phases``."""
    kinds = {k for p in phases for k, v in p["cpu_us_per_event"].items() if v is not None}
    return {
        kind: round(statistics.mean(p["cpu_us_per_event"].get(kind) or 0.0 for p in phases), 2)
        for kind in sorted(kinds, key=kind_rank)
    }


def render(data: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f} ms"

    off, on = data["eps_off"], data["eps_on"]
    cost = (off - on) / off * 100 if off else 0.0
    rows = [
        "| measure | target | measured |",
        "| --- | --- | --- |",
    ]
    for label, key, target in (
        ("normal event -> alert, saturation (full speed)", "full_normal", "p99 < 100 ms"),
        ("P0 event -> alert, saturation (full speed)", "full_p0", "p99 < 100 ms"),
        (f"normal event -> alert, {data['moderate_rate']:,.0f} ev/s", "moderate_normal", "p99 < 20 ms (aim)"),
        (f"P0 event -> alert, {data['moderate_rate']:,.0f} ev/s", "moderate_p0", "p99 < 20 ms"),
    ):
        lat = data[key]
        measured = f"p50 {ms(lat['p50_ms'])}, p99 {ms(lat['p99_ms'])} ({lat['count']} alerts)"
        rows.append(f"| {label} | {target} | {measured} |")
    for point in data.get("load_curve", []):
        parts = [
            f"{label} p50 {ms(point[kind]['p50_ms'])}, p99 {ms(point[kind]['p99_ms'])}"
            for kind, label in (("p0", "P0"), ("normal", "normal"))
        ]
        rows.append(
            f"| event -> alert at {point['share']:.0%} of capacity ({point['eps']:,.0f} ev/s) | p99 < 100 ms |"
            f" {'; '.join(parts)} |"
        )
    for kind, label in (("normal", "normal event"), ("p0", "P0 event")):
        hops = ((data["moderate_phase"].get("latency") or {}).get(kind) or {}).get("hops")
        if hops:
            parts = [f"{hop.replace('_', ' ')} p50 {ms(t['p50_ms'])}, p99 {ms(t['p99_ms'])}" for hop, t in hops.items()]
            rows.append(f"| {label} -> alert, {data['moderate_rate']:,.0f} ev/s, by hop | - | {'; '.join(parts)} |")
    phases = ", ".join(f"{p['eps']:,.0f}" for p in data["throughput_phases"])
    rows.append(
        f"| sustained throughput, rules on vs off | cost <= 10% | {on:,.0f} vs {off:,.0f} ev/s ({cost:+.1f}% cost;"
        f" phases off, on, on, off: {phases}) |"
    )
    on_cpu, off_cpu = data.get("cpu_on"), data.get("cpu_off")
    if on_cpu and off_cpu:
        parts = [
            f"{kind} {on_cpu.get(kind, 0.0):,.1f} vs {off_cpu.get(kind, 0.0):,.1f}"
            for kind in sorted(on_cpu.keys() | off_cpu.keys(), key=kind_rank)
        ]
        total_on, total_off = sum(on_cpu.values()), sum(off_cpu.values())
        rows.append(
            f"| CPU per acknowledged event, rules on vs off (us, full speed) | - | {', '.join(parts)};"
            f" all {total_on:,.1f} vs {total_off:,.1f} ({(total_on - total_off) / total_off * 100:+.1f}%) |"
        )
    m = data["machine"]
    rows.append("")
    rows.append(
        f"Phases off, on, on, off at full speed ({data['duration_s']:.0f} s each after {data['warmup_s']:.0f} s of"
        f" warm-up), then on at fixed rates: shares of the rules-on capacity (the mean of the two on phases)"
        f" and the moderate rate; {m['cpus']} cores, everything on one machine."
        f" Run {data['started']} at commit `{data['commit']}` with `python -m bench.alerts`"
        + (" --smoke (not a measurement)." if data["smoke"] else ".")
    )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    infra("up")
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-alerts-"))
    order = [("off-1", False), ("on-1", True), ("on-2", True), ("off-2", False)]
    throughput = [_phase(name, on, args, run_dir, 0.0) for name, on in order]
    on = [p for p in throughput if p["rules"]]
    off = [p for p in throughput if not p["rules"]]
    capacity = statistics.mean(p["eps"] for p in on)
    curve = [
        _phase(f"on-{share:.0%}", True, args, run_dir, round(capacity * share, -2)) | {"share": share}
        for share in args.shares
    ]
    moderate = _phase("on-moderate", True, args, run_dir, args.rate)
    return {
        "started": started,
        "commit": git_commit(),
        "machine": machine(),
        "smoke": args.smoke,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "moderate_rate": args.rate,
        "throughput_phases": throughput,
        "load_curve": [
            {k: p[k] for k in ("phase", "share", "rate", "eps")}
            | {"p0": _merge_latency([p], "p0"), "normal": _merge_latency([p], "normal")}
            for p in curve
        ],
        "load_curve_phases": curve,
        "moderate_phase": moderate,
        "eps_on": capacity,
        "eps_off": statistics.mean(p["eps"] for p in off),
        "cpu_on": _mean_cpu(on),
        "cpu_off": _mean_cpu(off),
        "full_normal": _merge_latency(on, "normal"),
        "full_p0": _merge_latency(on, "p0"),
        "moderate_normal": _merge_latency([moderate], "normal"),
        "moderate_p0": _merge_latency([moderate], "p0"),
    }


def synthetic_mix(n: int, roles_share: float = 0.0) -> tuple[list[pb.Event], _Roles | None]:
    """``n`` events of the synthetic mix as ingest passes them on, with the attributes the pack reads
    on some of them, and optionally a role relation that knows ``roles_share`` of the weddings."""
    rng = random.Random(11)
    now = int(time.time() * 1000)
    out = []
    for i, kw in enumerate(Synthetic(seed=11).events(n)):
        ev = pb.Event(event_id=f"ev-{i}", received_at_us=now * 1000, **kw)
        if kw["resource_type"] in ("guestlist", "payment") and i % 4 == 0:
            ev.attributes["record_count"] = str(rng.choice([12, 80, 600]))
        if kw["event_type"] == "permission.granted":
            ev.attributes["target_user_id"] = kw["user_id"]
        ev.occurred_at.FromMilliseconds(now - rng.randrange(300_000))
        out.append(ev)
    if not roles_share:
        return out, None
    weddings = sorted({ev.wedding_id for ev in out if ev.wedding_id})
    known = weddings[: int(len(weddings) * roles_share)]
    return out, _Roles({w: {f"org-{k:03d}" for k in range(0, 97, 2)} for w in known})


class _Roles:
    def __init__(self, relation: dict[str, set[str]]) -> None:
        self._relation = relation

    def has_role(self, wedding_id: str, organization_id: str) -> bool | None:
        orgs = self._relation.get(wedding_id)
        return None if orgs is None else organization_id in orgs


def eval_cost(events: int, repeats: int) -> dict[str, Any]:
    """CPU microseconds per event of evaluating the pack (``evaluate``, through the rule index) over the
    synthetic mix, side by side (alternating) with every rule's predicate on every event, the
    straightforward evaluation the index must agree with; without and with a role relation."""
    rules = load_rules(RULES)
    out: dict[str, Any] = {"events": events, "repeats": repeats, "rules": len(rules.detections)}
    for label, share in (("no_roles", 0.0), ("roles", 0.5)):
        batch, roles = synthetic_mix(events, share)
        times: dict[str, list[float]] = {"index": [], "every_predicate": []}
        for _ in range(repeats):
            started = time.process_time()
            evaluate(rules, batch, roles)
            times["index"].append((time.process_time() - started) / len(batch) * 1e6)
            started = time.process_time()
            for ev in batch:
                for d in rules.detections:
                    d.matches(ev, roles)
            times["every_predicate"].append((time.process_time() - started) / len(batch) * 1e6)
        out[label] = {k: {"median_us": statistics.median(v), "min_us": min(v)} for k, v in times.items()}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alerts-duration", dest="duration", type=float, default=60.0)
    parser.add_argument("--alerts-warmup", dest="warmup", type=float, default=10.0)
    parser.add_argument("--alerts-rate", dest="rate", type=float, default=3000.0, help="ev/s of the moderate phase")
    parser.add_argument(
        "--alerts-shares",
        dest="shares",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[0.5, 0.65, 0.8],
        help="the load curve: fixed rates as shares of the rules-on capacity (comma-separated; empty for none)",
    )
    parser.add_argument("--probe-interval", type=float, default=0.2, help="seconds between probe triggers")
    parser.add_argument("--quiet", type=float, default=60.0, help="most seconds to wait for a quiet store")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--eval", action="store_true", help="evaluation cost alone (no services); prints JSON")
    parser.add_argument("--eval-events", type=int, default=20_000)
    parser.add_argument("--eval-repeats", type=int, default=7)
    add_arguments(parser)
    args = parser.parse_args()
    if args.eval:
        print(json.dumps(eval_cost(args.eval_events, 2 if args.smoke else args.eval_repeats), indent=2))
        return 0
    if args.smoke:
        smoke(args)
    data = run(args)
    print(render(data))
    return finish(data, readme=not args.no_readme)


def from_pipeline(pipeline_args: argparse.Namespace) -> int:
    """``python -m bench.pipeline --alerts``: these phases after the pipeline's, with its clients and processors."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    args.smoke, args.clients, args.processors = pipeline_args.smoke, pipeline_args.clients, pipeline_args.processors
    if args.smoke:
        smoke(args)
    data = run(args)
    print(render(data))
    return finish(data, readme=not pipeline_args.no_readme)


def smoke(args: argparse.Namespace) -> None:
    args.duration, args.warmup, args.clients, args.quiet, args.rate = 4.0, 1.0, 1, 5.0, 1000.0
    args.shares = [0.8]


def finish(data: dict[str, Any], *, readme: bool) -> int:
    if not data["eps_on"] or not data["eps_off"]:
        print("a phase acknowledged no events; nothing written")
        return 1
    if not data["full_p0"]["count"] or not data["moderate_p0"]["count"]:
        print("no probe alert came back; nothing written")
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("alerts-smoke-latest.json" if data["smoke"] else "alerts-latest.json")).write_text(
        json.dumps(data, indent=2) + "\n"
    )
    if readme and not data["smoke"]:
        update_readme(data, START, END, render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
