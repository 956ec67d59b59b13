"""The ``auditmesh`` command: bring the local mesh up and down, check it, emit and query events.

auditmesh up | down | status | schema
auditmesh emit N [--weddings W]
auditmesh query (--wedding ID | --user ID) [--type T ...] [--min-severity P1] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.detection import cli as detection_cli
from auditmesh.mesh import JAEGER_SCRIPT, MeshLayout, infra
from auditmesh.scaling import cli as scaling_cli
from auditmesh.schema import create_schema
from auditmesh.sdk_query import search_pages
from auditmesh.security import cli as security_cli
from auditmesh.security.client import call_metadata, client_options, operator_credentials
from auditmesh.store import EventStore
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from auditmesh.telemetry import reports
from auditpb.v1 import audit_pb2 as pb

__all__ = ["main"]


def _run_dir() -> Path:
    return Path(os.environ.get("AUDITMESH_RUN_DIR", Path.home() / ".local" / "state" / "auditmesh"))


def _schema() -> None:
    cfg = StoreConfig.from_env(os.environ)
    create_schema(cfg)


def cmd_up(args: argparse.Namespace) -> int:
    # Replicas are settings like the others: the status and down of this process see them too.
    if args.ingest_replicas:
        os.environ["AUDITMESH_INGEST_REPLICAS"] = str(args.ingest_replicas)
    if args.query_replicas:
        os.environ["AUDITMESH_QUERY_REPLICAS"] = str(args.query_replicas)
        if args.query_replicas > 1:
            # Page tokens must be signed with one key for any replica to continue any search.
            os.environ.setdefault("AUDITMESH_TOKEN_KEY", secrets.token_hex(32))
    infra("up")
    if args.traces:
        subprocess.run([str(JAEGER_SCRIPT), "up"], check=True)
        # The services inherit this process's environment: they export to the local Jaeger.
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        os.environ.setdefault("OTEL_EXPORTER_OTLP_INSECURE", "true")
    _schema()
    rules = Path(__file__).resolve().parent.parent / "rules"
    if rules.is_dir():  # the processors evaluate the repository's rule pack unless told otherwise
        os.environ.setdefault("AUDITMESH_DETECTION_RULES", str(rules))
    layout = MeshLayout.from_env(os.environ)
    supervisor = Supervisor(_run_dir() / "services")
    layout.start(supervisor)
    return cmd_status(args)


def cmd_down(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    layout.stop(Supervisor(_run_dir() / "services"))
    if not args.services_only:
        infra("down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    ok = True
    targets = {p.name: p.target for p in layout.services()}
    for name, state in layout.health().items():
        print(f"{name:<12} {'up' if state == 'SERVING' else 'down':<5} {targets[name]:<22} {state}")
        ok = ok and state == "SERVING"
    try:
        infra("status")
    except Exception:
        ok = False
    supervisor = Supervisor(_run_dir() / "services")
    ingest = supervisor.stats("ingest")
    if ingest:
        print(
            f"ingest       accepted {ingest['accepted']:,}, rejected {ingest['rejected']:,}, "
            f"asked to retry {ingest['retried']:,}, refused batches {ingest['refused']:,}, "
            f"in flight {ingest['in_flight_events']:,}, dropped by clients {ingest['client_dropped']:,}"
        )
    for i in range(layout.processors):
        stats = supervisor.stats(layout.processor(i).name)
        if stats:
            write = stats.get("write_us") or {}
            print(
                f"processor-{i}  written {stats['written']:,}, failed {stats['failed']:,}, "
                f"write p99 {(write.get('p99') or 0) / 1000:.1f} ms, "
                f"cache-version failures {stats.get('version_bump_failures', 0)}"
            )
    query = supervisor.stats("query")
    if query and query.get("cache"):
        cache = query["cache"]
        print(f"query        cache hits {cache['hits']:,}, misses {cache['misses']:,}, errors {cache['errors']:,}")
    _status_performance(layout)
    return 0 if ok else 1


def _status_performance(layout: MeshLayout) -> None:
    """The metrics endpoints and the performance monitor's active alerts (stored in Redis)."""
    from auditmesh.telemetry.monitor import read_alerts

    targets = layout.metrics_targets()
    if targets:
        print("metrics      " + ", ".join(f"{name} http://{target}/metrics" for name, target in targets.items()))
    if not layout.monitor:
        return
    try:
        url = layout.extra_env.get("AUDITMESH_REDIS_URL", "redis://127.0.0.1:6379/0")
        active, checked = read_alerts(url, layout.alert_prefix)
    except Exception as exc:
        print(f"monitor      performance alerts unavailable: {exc}")
        return
    if checked is None:
        print("monitor      no recent check")
    else:
        day = " (wedding day: stricter thresholds)" if checked.get("wedding_day") else ""
        print(f"monitor      last check {time.time() - checked['at']:.0f}s ago{day}, {len(active)} performance alerts")
    for alert in active:
        since = dt.datetime.fromtimestamp(alert["since"], dt.UTC).strftime("%H:%M:%S UTC")
        value = "-" if alert.get("value") is None else f"{alert['value']:.6g}"
        worst = alert.get("worst") or 0.0
        threshold = alert["threshold"]
        print(f"  ALERT {alert['check']}: now {value}, threshold {threshold:.6g}, since {since}, worst {worst:.6g}")


def cmd_top(args: argparse.Namespace) -> int:
    from auditmesh.telemetry import top

    layout = MeshLayout.from_env(os.environ)
    targets = {p.name: p.target for p in layout.services()}
    endpoints = [top.Endpoint(name, targets[name], metrics) for name, metrics in layout.metrics_targets().items()]
    if not endpoints:
        print("metrics are off (AUDITMESH_METRICS_PORT_OFFSET=0)", file=sys.stderr)
        return 1
    return top.run(endpoints, f"auditmesh top: {layout.ingest_target}", args.interval)


def cmd_schema(args: argparse.Namespace) -> int:
    _schema()
    print("schema ready")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    def show(scanned: int) -> None:
        sys.stderr.write(f"\r{scanned:,} events indexed")

    store = EventStore.connect(StoreConfig.from_env(os.environ))
    try:
        scanned = store.backfill_locators(show)
    finally:
        store.close()
    print(f"\n{scanned:,} events have a GetEvent locator")
    return 0


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f} ev/s")
    sys.stderr.flush()


_EMIT_WINDOW = 50_000
"""Events ``emit`` lets wait in the SDK before it pauses."""


def cmd_emit(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    synthetic = Synthetic(weddings=args.weddings, seed=args.seed)
    cfg = StoreConfig.from_env(os.environ)
    store = EventStore.connect(cfg)
    try:
        asyncio.run(store.put_calendar(synthetic.calendar(dt.datetime.now(dt.UTC).date())))
    finally:
        store.close()
    rejected: Counter[str] = Counter()
    client = AuditClient(
        layout.ingest_targets,
        source_service="auditmesh-emit",
        on_rejected=lambda r: rejected.update([f"{r.field}: {r.reason}"]),
        **client_options(args.token),
    )
    started = time.monotonic()
    for i, kwargs in enumerate(synthetic.events(args.count), 1):
        client.log(**kwargs)
        if i % 1000 == 0 or i == args.count:
            _progress(client.stats.acked, args.count, started)
            # A load tool waits for the mesh instead of overflowing the SDK's buffer (which
            # would drop events, as it must for an application that cannot wait).
            while client.stats.pending > _EMIT_WINDOW:
                time.sleep(0.02)
                _progress(client.stats.acked, args.count, started)
    while client.stats.pending and time.monotonic() - started < args.timeout:
        _progress(client.stats.acked, args.count, started)
        time.sleep(0.1)
    flushed = client.close(timeout=max(1.0, args.timeout - (time.monotonic() - started)))
    _progress(client.stats.acked, args.count, started)
    s = client.stats
    elapsed = time.monotonic() - started
    print(
        f"\nemitted {s.logged} events to {layout.ingest_target} in {elapsed:.1f}s: {s.acked} acknowledged, "
        f"{s.rejected} rejected, {s.resent} resent, {s.dropped} dropped"
    )
    for reason, n in rejected.most_common(5):
        print(f"  rejected {n}: {reason}")
    print(f"busiest wedding: {synthetic.wedding_id(0)}")
    return 0 if flushed and s.acked + s.rejected == s.logged else 1


def _table(events: list[pb.Event]) -> str:
    rows = [("occurred_at (UTC)", "severity", "outcome", "event_type", "user", "org", "prio", "event_id")]
    for ev in events:
        when = dt.datetime.fromtimestamp(ev.occurred_at.seconds + ev.occurred_at.nanos / 1e9, dt.UTC)
        rows.append(
            (
                when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                pb.Severity.Name(ev.severity),
                pb.Outcome.Name(ev.outcome).removeprefix("OUTCOME_").lower(),
                ev.event_type,
                ev.user_id,
                ev.organization_id,
                str(ev.priority),
                ev.event_id,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def cmd_query(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    req = pb.SearchRequest(
        wedding_id=args.wedding or "",
        user_id=args.user or "",
        event_types=args.type or [],
        organization_id=args.org or "",
        page_size=min(args.limit, 1000),
        max_pages=1,
    )
    if args.min_severity:
        req.min_severity = pb.Severity.Value(args.min_severity)
    if args.outcome:
        req.outcome = pb.Outcome.Value(f"OUTCOME_{args.outcome.upper()}")
    try:
        pages = search_pages(
            layout.query_targets,
            req,
            timeout=10,
            credentials=operator_credentials(),
            metadata=call_metadata(args.token),
        )
    except grpc.RpcError as exc:
        print(f"query failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    events = [ev for page in pages for ev in page.events][: args.limit]
    print(_table(events))
    more = " (more available)" if pages and pages[-1].next_page_token else ""
    print(f"{len(events)} events{more}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="auditmesh", description=__doc__.splitlines()[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Cassandra, Redis and the services (idempotent)")
    up.add_argument("--traces", action="store_true", help="also start Jaeger and export every service's traces to it")
    up.add_argument("--ingest-replicas", type=int, help="ingest processes, each on its own port (default 1)")
    up.add_argument("--query-replicas", type=int, help="query processes, each on its own port (default 1)")
    up.set_defaults(fn=cmd_up)
    down = sub.add_parser("down", help="stop the services, then Cassandra and Redis")
    down.add_argument("--services-only", action="store_true", help="leave Cassandra and Redis running")
    down.set_defaults(fn=cmd_down)
    sub.add_parser("status", help="health of every part; exit 1 if any is down").set_defaults(fn=cmd_status)
    top = sub.add_parser("top", help="live view of every service and lane from their metrics (q quits)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.set_defaults(fn=cmd_top)
    sub.add_parser("schema", help="create the keyspace and tables if missing").set_defaults(fn=cmd_schema)
    sub.add_parser(
        "reindex", help="write GetEvent's locator for events stored before it existed (full scan, idempotent)"
    ).set_defaults(fn=cmd_reindex)
    emit = sub.add_parser("emit", help="send N realistic synthetic events through the SDK")
    emit.add_argument("count", type=int)
    emit.add_argument("--weddings", type=int, default=200)
    emit.add_argument("--seed", type=int, default=7)
    emit.add_argument("--timeout", type=float, default=120.0)
    emit.set_defaults(fn=cmd_emit)
    query = sub.add_parser("query", help="search events, newest first, as a table")
    who = query.add_mutually_exclusive_group(required=True)
    who.add_argument("--wedding")
    who.add_argument("--user")
    query.add_argument("--type", action="append", help="event type (repeatable)")
    query.add_argument("--min-severity", choices=[n for n in pb.Severity.keys() if n != "SEVERITY_UNSPECIFIED"])
    query.add_argument("--outcome", choices=["success", "failure", "denied"])
    query.add_argument("--org")
    query.add_argument("--limit", type=int, default=20)
    query.set_defaults(fn=cmd_query)
    for command in (emit, query):
        command.add_argument(
            "--token", default=os.environ.get("AUDITMESH_TOKEN"), help="bearer token ($AUDITMESH_TOKEN)"
        )
    security_cli.add_parsers(sub)
    reports.add_parsers(sub)
    scaling_cli.add_parsers(sub)
    detection_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
