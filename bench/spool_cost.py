"""What the SDK spool costs the caller: ``log()`` timed per call with the spool off and on, in
one run, the phases interleaved (off, on, on, off) so that drift of the shared host falls on
both alike.

    python -m bench.spool_cost            # 200,000 events per phase
    python -m bench.spool_cost --smoke    # 20,000 events per phase, a few seconds

The client sends to an address where nothing listens, so that every batch stays unacknowledged
and the SDK thread keeps writing the spool for the whole phase (the most the spool can cost
while the caller logs); with the spool off the same batches wait in memory. Events are logged
at a fixed rate from one thread. Writes bench/results/spool-cost-latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from auditmesh.client import AuditClient
from auditpb.v1 import audit_pb2 as pb
from bench.report import RESULTS, git_commit, machine

OUT = RESULTS / "spool-cost-latest.json"
UNREACHABLE = "127.0.0.1:9"  # discard: nothing listens


def _phase(spool: bool, events: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        client = AuditClient(
            UNREACHABLE,
            source_service="spool-cost",
            spool_dir=Path(tmp) / "spool" if spool else None,
            max_pending_events=events + 1,
            exit_timeout=0,
        )
        costs: list[int] = []
        started = time.monotonic()
        for n in range(events):
            while n > (time.monotonic() - started) * rate:
                time.sleep(0.0005)
            t0 = time.perf_counter_ns()
            client.log(
                "guestlist.viewed",
                user_id=f"u-{n % 97}",
                organization_id="org",
                wedding_id=f"wed-{n % 13}",
                severity=pb.P0_CRITICAL if n % 100 == 0 else pb.P2_MEDIUM,
            )
            costs.append(time.perf_counter_ns() - t0)
        deadline = time.monotonic() + 10
        while spool and client.stats.spooled < events and time.monotonic() < deadline:
            time.sleep(0.01)  # let the SDK thread catch up before the spool is measured
        stats = client.stats
        spool_bytes = (Path(tmp) / "spool" / "spool.log").stat().st_size if spool else 0
        client.close(0)
    costs.sort()
    return {
        "spool": spool,
        "events": events,
        "p50_ns": costs[len(costs) // 2],
        "p99_ns": costs[int(len(costs) * 0.99)],
        "max_ns": costs[-1],
        "mean_ns": round(statistics.fmean(costs)),
        "spooled_events": stats.spooled,
        "spool_bytes": spool_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="20,000 events per phase")
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s logged")
    args = parser.parse_args()
    events = 20_000 if args.smoke else 200_000
    phases = [_phase(spool, events, args.rate) for spool in (False, True, True, False)]
    summary = {}
    for spool in (False, True):
        mine = [p for p in phases if p["spool"] is spool]
        summary["on" if spool else "off"] = {
            key: round(statistics.fmean(p[key] for p in mine)) for key in ("p50_ns", "p99_ns", "max_ns", "mean_ns")
        }
    doc = {
        "run": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "smoke": args.smoke,
        "rate": args.rate,
        "machine": machine(),
        "phases": phases,
        "summary": summary,
    }
    out = OUT.with_name("spool-cost-smoke-latest.json") if args.smoke else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    off, on = summary["off"], summary["on"]
    print(
        f"log() with the spool off: p50 {off['p50_ns']:,} ns, p99 {off['p99_ns']:,} ns; "
        f"on: p50 {on['p50_ns']:,} ns, p99 {on['p99_ns']:,} ns ({events:,} events per phase at {args.rate:,.0f}/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
