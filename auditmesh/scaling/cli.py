"""``auditmesh scaler`` and ``auditmesh weddings``: the scaler's state and switch, the calendar.

auditmesh scaler status [--decisions N]   capacity, signals, forecast for the next hours, last
                                          decisions, members, storage recommendation
auditmesh scaler emergency on|off         manual wedding-day mode (raises the floor)
auditmesh weddings import FILE.csv        add or update weddings; one error per bad line (exit 1)
auditmesh weddings generate --start D --days N [--saturday-peak 60] [--seed S] [--out F] [--import]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import grpc

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.scaling.calendar import Wedding, generate, parse_csv, put_weddings, to_csv
from auditmesh.security.client import operator_channel
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc

__all__ = ["add_parsers", "render_status"]


def _when(at_us: int) -> str:
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_status(status: spb.ScalerStatus, decisions: int = 10) -> str:
    emergency = f"on ({status.emergency_source})" if status.emergency else "off"
    lines = [
        f"processors   {status.current} running, target {status.target} (min {status.min_replicas}, "
        f"max {status.max_replicas}, floor {status.floor}); actuator {status.actuator}; emergency {emergency}",
        f"load         {status.events_in_per_s:,.0f} ev/s in, {status.queue_depth:,} events in flight, "
        f"processing p99 {status.processing_p99_us / 1000:.1f} ms, write p99 {status.write_p99_us / 1000:.1f} ms",
        f"storage      {status.storage_recommendation or 'write latency within target: no change recommended'}",
        "forecast     (processors required; weddings active)",
    ]
    for point in status.forecast:
        lines.append(f"  {_when(point.at_us)}  {point.required:>3}  {point.active_weddings:>4}  {point.reason}")
    lines.append(f"decisions    (last {min(decisions, len(status.decisions))} of {len(status.decisions)} kept)")
    for d in list(status.decisions)[-decisions:]:
        change = f"{d.current} -> {d.target}" if d.target != d.current else f"{d.current}"
        lines.append(f"  {_when(d.at_us)}  {d.rule:<13} {change:<7} {d.reason}")
    lines.append("members")
    for m in status.members:
        age = "registered, no report yet" if m.age_s < 0 else f"report {m.age_s:.1f}s ago"
        lines.append(
            f"  {m.service:<10} {m.address:<22} {m.events_per_s:>9,.0f} ev/s  {m.events_total:>12,} total  {age}"
        )
    return "\n".join(lines)


def _stub(channel: grpc.Channel) -> spb_grpc.ScalerServiceStub:
    return spb_grpc.ScalerServiceStub(channel)


def cmd_status(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    with operator_channel(layout.scaler_target) as channel:
        try:
            status = _stub(channel).Status(spb.StatusRequest(), timeout=5)
        except grpc.RpcError as exc:
            print(f"scaler {layout.scaler_target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(render_status(status, args.decisions))
    return 0


def cmd_emergency(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    with operator_channel(layout.scaler_target) as channel:
        try:
            status = _stub(channel).SetEmergency(spb.EmergencyRequest(on=args.state == "on"), timeout=10)
        except grpc.RpcError as exc:
            print(f"scaler {layout.scaler_target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"emergency {'on' if status.emergency else 'off'}: floor {status.floor}, target {status.target}")
    return 0


def _store_weddings(weddings: list[Wedding]) -> None:
    from auditmesh.store import EventStore

    cfg = StoreConfig.from_env(os.environ)
    store = EventStore.connect(cfg, executor_threads=1)
    try:
        put_weddings(store.session, cfg.keyspace, weddings)
    finally:
        store.close()


def cmd_import(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    weddings, errors = parse_csv(text)
    for error in errors:
        print(f"{args.file}: {error}", file=sys.stderr)
    if weddings:
        _store_weddings(weddings)
    print(f"{len(weddings)} weddings imported, {len(errors)} lines with errors")
    return 1 if errors else 0


def cmd_generate(args: argparse.Namespace) -> int:
    weddings = generate(dt.date.fromisoformat(args.start), args.days, saturday_peak=args.saturday_peak, seed=args.seed)
    text = to_csv(weddings)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    elif not args.store:
        sys.stdout.write(text)
    if args.store:
        _store_weddings(weddings)
    print(f"{len(weddings)} weddings generated", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    scaler = sub.add_parser("scaler", help="the scaler: capacity, forecast, decisions; emergency mode")
    scaler_sub = scaler.add_subparsers(dest="scaler_command", required=True)
    status = scaler_sub.add_parser("status", help="capacity, forecast for the next hours, last decisions")
    status.add_argument("--decisions", type=int, default=10, help="how many of the last decisions to show")
    status.set_defaults(fn=cmd_status)
    emergency = scaler_sub.add_parser("emergency", help="manual wedding-day mode: raises the floor until off")
    emergency.add_argument("state", choices=["on", "off"])
    emergency.set_defaults(fn=cmd_emergency)
    weddings = sub.add_parser("weddings", help="the wedding calendar the scaler forecasts from")
    weddings_sub = weddings.add_subparsers(dest="weddings_command", required=True)
    imp = weddings_sub.add_parser(
        "import",
        help="add or update weddings from a CSV (wedding_id,wedding_date,ceremony_time,timezone,guests,vendors)",
    )
    imp.add_argument("file")
    imp.set_defaults(fn=cmd_import)
    gen = weddings_sub.add_parser("generate", help="a realistic calendar (season May-October, Saturdays) as CSV")
    gen.add_argument("--start", default=dt.datetime.now(dt.UTC).date().isoformat(), help="first day (YYYY-MM-DD)")
    gen.add_argument("--days", type=int, default=90)
    gen.add_argument("--saturday-peak", type=int, default=60, help="weddings on a peak-season Saturday")
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--out", help="write the CSV here (default: standard output)")
    gen.add_argument("--import", dest="store", action="store_true", help="also write the weddings to the store")
    gen.set_defaults(fn=cmd_generate)
