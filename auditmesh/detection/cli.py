"""``auditmesh alerts tail | list | check``: threat-detection alerts from the command line."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Iterable

import grpc

from auditmesh.detection.rules import RuleError, load_rules
from auditmesh.mesh import MeshLayout
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc
from auditpb.v1 import audit_pb2 as pb

__all__ = ["add_parsers"]

_SEVERITIES = [n for n in pb.Severity.keys() if n != "SEVERITY_UNSPECIFIED"]


def _filter(args: argparse.Namespace) -> apb.AlertFilter:
    f = apb.AlertFilter(wedding_id=args.wedding or "", organization_id=args.org or "", rule=args.rule or "")
    if args.min_severity:
        f.min_severity = pb.Severity.Value(args.min_severity)
    return f


def _line(a: apb.Alert) -> str:
    at = dt.datetime.fromtimestamp(a.updated_at.ToMilliseconds() / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    where = " ".join(part for part in (f"wedding={a.wedding_id}" if a.wedding_id else "", a.group) if part)
    return (
        f"{at}  {pb.Severity.Name(a.severity):<11} {a.rule:<28} x{a.count:<6} {where}  {a.explanation}  [{a.alert_id}]"
    )


def _print(alerts: Iterable[apb.Alert]) -> int:
    n = 0
    for a in alerts:
        print(_line(a), flush=True)
        n += 1
    return n


def cmd_tail(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    with grpc.insecure_channel(layout.query_target) as channel:
        call = apb_grpc.AlertServiceStub(channel).SubscribeAlerts(apb.SubscribeAlertsRequest(filter=_filter(args)))
        try:
            _print(call)
        except KeyboardInterrupt:
            call.cancel()
        except grpc.RpcError as exc:
            print(f"alerts tail failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    layout = MeshLayout.from_env(os.environ)
    req = apb.ListAlertsRequest(filter=_filter(args), page_size=min(args.limit, 1000))
    if args.since_hours:
        req.since.FromMilliseconds(int((dt.datetime.now(dt.UTC).timestamp() - args.since_hours * 3600) * 1000))
    shown = 0
    with grpc.insecure_channel(layout.query_target) as channel:
        stub = apb_grpc.AlertServiceStub(channel)
        while shown < args.limit:
            try:
                page = stub.ListAlerts(req, timeout=10)
            except grpc.RpcError as exc:
                print(f"alerts list failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            shown += _print(page.alerts[: args.limit - shown])
            if not page.next_page_token:
                break
            req.page_token = page.next_page_token
    print(f"{shown} alerts")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.dir)
    except RuleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dir}: {len(rules.detections)} detection rules, {len(rules.correlations)} correlations, all valid")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser("alerts", help="threat-detection alerts: tail, list, check rule files")
    commands = alerts.add_subparsers(dest="alerts_command", required=True)
    for name, help_text, fn in (
        ("tail", "stream alerts as they are raised or updated (Ctrl-C stops)", cmd_tail),
        ("list", "stored alerts, newest first", cmd_list),
    ):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--wedding")
        p.add_argument("--org")
        p.add_argument("--rule")
        p.add_argument("--min-severity", choices=_SEVERITIES)
        if name == "list":
            p.add_argument("--limit", type=int, default=50)
            p.add_argument(
                "--since-hours", type=float, default=0.0, help="only alerts of the last N hours (default 7 days)"
            )
        p.set_defaults(fn=fn)
    check = commands.add_parser("check", help="parse and validate a directory of Sigma rule files; exit 1 if bad")
    check.add_argument("dir", nargs="?", default="rules")
    check.set_defaults(fn=cmd_check)
