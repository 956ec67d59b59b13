"""``auditmesh trace`` and ``auditmesh budget``: what an SRE reads from the traces.

auditmesh trace EVENT_ID|TRACE_ID   the trace of one event (found through GetEvent's trace_id) as
                                    a waterfall, budget breaches marked
auditmesh budget [--spans FILE]     per stage count, p50/p95/p99 against the latency budget for
                 [--since S]        the spans of a window (Jaeger's query API by default);
                                    exit 1 on a violation, 2 when there is nothing to check
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import grpc

from auditmesh.mesh import MeshLayout
from auditmesh.telemetry.budget import check, render, span_budget
from auditmesh.telemetry.spans import JaegerQuery, SpanRecord, read_jsonl, waterfall
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

__all__ = ["add_parsers"]

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_DEFAULT_JAEGER = "http://127.0.0.1:16686"


def _jaeger(args: argparse.Namespace) -> JaegerQuery:
    return JaegerQuery(args.jaeger or os.environ.get("AUDITMESH_JAEGER_URL", _DEFAULT_JAEGER))


def _trace_id_of(event_id: str) -> str:
    layout = MeshLayout.from_env(os.environ)
    with grpc.insecure_channel(layout.query_target) as channel:
        event = pb_grpc.QueryServiceStub(channel).GetEvent(pb.GetEventRequest(event_id=event_id), timeout=10)
    return str(event.trace_id)


def cmd_trace(args: argparse.Namespace) -> int:
    wanted = args.id.lower()
    if _TRACE_ID.fullmatch(wanted):
        trace_id = wanted
    else:
        try:
            trace_id = _trace_id_of(args.id)
        except grpc.RpcError as exc:
            print(f"event {args.id[:128]}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        if not trace_id:
            print(
                f"event {args.id} was not traced: its batch was not sampled (critical events always are;"
                " the others by OTEL_TRACES_SAMPLER_ARG)",
                file=sys.stderr,
            )
            return 1
    jaeger = _jaeger(args)
    deadline = time.monotonic() + args.wait
    spans: list[SpanRecord] = []
    while True:  # spans reach the backend in batches: wait until the trace stops growing
        latest = jaeger.trace(trace_id)
        if latest and len(latest) == len(spans):
            break
        spans = latest
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not spans:
        print(f"trace {trace_id} not found in Jaeger ({args.jaeger or _DEFAULT_JAEGER})", file=sys.stderr)
        return 1
    print(waterfall(spans, span_budget))
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    end_us = time.time_ns() // 1000
    start_us = end_us - int(args.since * 1_000_000)
    if args.spans:
        spans = read_jsonl(Path(args.spans), start_us if args.since else 0)
        source = args.spans
    else:
        jaeger = _jaeger(args)
        services = [s for s in jaeger.services() if s.startswith("auditmesh-")]
        spans = jaeger.spans(services, start_us, end_us, limit=args.limit)
        source = f"Jaeger, {', '.join(services) or 'no auditmesh services'}"
    results = check(spans)
    print(f"latency budget over {len(spans)} spans ({source})")
    print(render(results))
    if not any(r.samples_us for r in results if r.budget_us is not None):
        print("no span of a stage with a budget: nothing was checked", file=sys.stderr)
        return 2
    violated = [r for r in results if r.violated]
    if violated:
        names = ", ".join(r.stage + (" (wedding day)" if r.wedding_day else "") for r in violated)
        print(f"budget violated: {names}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = sub.add_parser("trace", help="print one event's trace (or a trace id's) as a waterfall")
    trace.add_argument("id", help="an event id, or a trace id (32 hex digits)")
    trace.add_argument("--jaeger", help=f"Jaeger query API (default $AUDITMESH_JAEGER_URL or {_DEFAULT_JAEGER})")
    trace.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the trace's spans")
    trace.set_defaults(fn=cmd_trace)
    budget = sub.add_parser("budget", help="latency budget per stage from the spans of a window; exit 1 if broken")
    budget.add_argument("--spans", help="a JSON-lines span file (AUDITMESH_SPANS_FILE) instead of Jaeger")
    budget.add_argument("--jaeger", help=f"Jaeger query API (default $AUDITMESH_JAEGER_URL or {_DEFAULT_JAEGER})")
    budget.add_argument("--since", type=float, default=600.0, help="window in seconds back from now (0: all)")
    budget.add_argument("--limit", type=int, default=2000, help="traces per service read from Jaeger")
    budget.set_defaults(fn=cmd_budget)
