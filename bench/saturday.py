"""The Saturday rush: per-lane ack latency while bulk traffic saturates the mesh.

Bulk SDK clients log at full speed (the normal lane) while three probe clients, each its own
process with ``linger_ms`` 5 as in issue 22's setup, log ``--probe-rate`` events/s each: one
for a set of weddings in today's calendar (the wedding-day lane), one for weddings that are not
(normal), one P0 (critical). Each probe times every event from ``log()`` to its acknowledgement
(resends included); events still unacknowledged at the end count as slower than any, so a
percentile that falls among them is reported as unknown (None) rather than flattered.

Two ways to run it:

- inside the pipeline benchmark (``bench/pipeline.py`` calls :func:`prepare` before it starts
  the mesh, so ingest reads the calendar when it starts, and :func:`run_phase` with its own
  full-speed bulk phase); the results go to ``latest.json`` under ``saturday`` and
  ``lane_ack_ms``, and into the README through ``bench.report.render_saturday``;
- on its own, against a running mesh whose ingest reads the same keyspace
  (``python -m bench.saturday --target HOST:PORT --keyspace KS``), with bulk load of your own
  (``auditmesh emit`` in the background, as the issue measured): prints the lane table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.metrics import percentile
from auditmesh.priority import CalendarEntry
from auditmesh.store import EventStore
from auditpb.v1 import audit_pb2 as pb

__all__ = ["LANES", "TODAY_WEDDINGS", "lane_summary", "prepare", "run_phase", "run_probes"]

TODAY_WEDDINGS = [f"saturday-today-{k:02d}" for k in range(20)]
"""Weddings put in today's calendar (UTC): the wedding-day probe logs for these."""
OTHER_WEDDINGS = [f"saturday-other-{k:02d}" for k in range(20)]
"""Weddings in no calendar: the normal probe logs for these."""
LANES = ("wedding_day", "normal", "critical")
PROBE_LINGER_MS = 5.0


def prepare(keyspace: str) -> None:
    """Put :data:`TODAY_WEDDINGS` in today's calendar of ``keyspace`` (idempotent)."""
    today = dt.datetime.now(dt.UTC).date()
    store = EventStore.connect(StoreConfig(keyspace=keyspace))
    try:
        asyncio.run(store.put_calendar([CalendarEntry(w, today, "UTC") for w in TODAY_WEDDINGS]))
    finally:
        store.close()


class _EventTimedClient(AuditClient):
    """An AuditClient that records, for every event an OK ack stores, the time from its
    ``log()`` (its ``occurred_at``, kept by resends) to the ack, from ``measure_from_ns`` on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.measure_from_ns = 2**63
        self.ack_ns: list[int] = []
        self.rejected_in_window = 0

    def _on_ack(self, ack: pb.BatchAck, in_flight: dict[str, Any]) -> None:
        batch = in_flight.get(ack.batch_id)
        if batch is not None and ack.status == pb.ACK_STATUS_OK and batch in self._open:
            now = time.time_ns()
            rejected = {r.index for r in ack.rejected}
            for i, ev in enumerate(batch.msg.events):
                logged = ev.occurred_at.seconds * 1_000_000_000 + ev.occurred_at.nanos
                if logged < self.measure_from_ns:
                    continue
                if i in rejected:
                    self.rejected_in_window += 1
                else:
                    self.ack_ns.append(now - logged)
        super()._on_ack(ack, in_flight)


def run_probe(
    conn: Connection,
    *,
    target: str,
    lane: str,
    rate: float,
    start_at: float,
    warmup_s: float,
    duration_s: float,
    linger_ms: float = PROBE_LINGER_MS,
) -> None:
    """One probe process: log ``rate`` events/s of ``lane`` on a fixed schedule and send what
    was measured through ``conn``."""
    client = _EventTimedClient(target, source_service=f"saturday-{lane}", linger_ms=linger_ms)
    weddings = TODAY_WEDDINGS if lane == "wedding_day" else OTHER_WEDDINGS
    severity = pb.P0_CRITICAL if lane == "critical" else pb.P2_MEDIUM
    while time.time() < start_at:
        time.sleep(0.005)
    t0 = time.monotonic()
    measure_from = t0 + warmup_s
    end = measure_from + duration_s
    sent = logged_in_window = 0
    measuring = False
    while (now := time.monotonic()) < end:
        if not measuring and now >= measure_from:
            measuring = True
            client.measure_from_ns = time.time_ns()
        if sent >= int((now - t0) * rate):
            time.sleep(0.001)
            continue
        client.log(
            "guestlist.viewed",
            user_id=f"saturday-{lane}-user",
            organization_id="saturday",
            wedding_id=weddings[sent % len(weddings)],
            severity=severity,
            resource_type="guest_list",
            resource_id=f"gl-{sent % 50}",
        )
        sent += 1
        logged_in_window += measuring
    client.close(timeout=60)
    conn.send(
        {
            "lane": lane,
            "sent": sent,
            "logged_in_window": logged_in_window,
            "ack_ns": client.ack_ns,
            "unacked": logged_in_window - len(client.ack_ns) - client.rejected_in_window,
            "rejected": client.stats.rejected,
            "dropped": client.stats.dropped,
        }
    )
    conn.close()


def _pct(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None or math.isinf(p) else round(p / 1e6, 2)


def lane_summary(ack_ns: list[int], unacked: int) -> dict[str, Any]:
    """p50/p90/p99 in ms, unacknowledged events counted as slower than any."""
    ordered = sorted(float(v) for v in ack_ns) + [math.inf] * max(0, unacked)
    return {
        "events": len(ack_ns),
        "unacked": unacked,
        "p50": _pct(ordered, 50),
        "p90": _pct(ordered, 90),
        "p99": _pct(ordered, 99),
    }


def run_probes(
    target: str, *, rate: float, warmup_s: float, duration_s: float, during: Callable[[], Any] | None = None
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Run the three probes (starting in 2 s) and, meanwhile, ``during()`` (the bulk load, which
    should start at the same time and last as long); return per-lane summaries and what
    ``during`` returned."""
    start_at = time.time() + 2.0
    spawned = []
    for lane in LANES:
        parent, child = mp.Pipe(duplex=False)
        kwargs = {
            "conn": child,
            "target": target,
            "lane": lane,
            "rate": rate,
            "start_at": start_at,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
        }
        proc = mp.Process(target=run_probe, kwargs=kwargs)
        proc.start()
        spawned.append((proc, parent))
    bulk = during() if during is not None else None
    results = [conn.recv() for _, conn in spawned]
    for proc, _ in spawned:
        proc.join(30)
    return {r["lane"]: {**lane_summary(r["ack_ns"], r["unacked"]), **_counts(r)} for r in results}, bulk


def _counts(r: dict[str, Any]) -> dict[str, int]:
    return {k: r[k] for k in ("sent", "rejected", "dropped")}


def run_phase(
    target: str,
    bulk: Callable[[], dict[str, Any]],
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    full_speed_eps: float | None,
) -> dict[str, Any]:
    """The pipeline benchmark's Saturday-rush phase: ``bulk()`` runs the full-speed bulk clients
    (with this phase's warm-up and duration) while the probes run. Returns the phase's results,
    with ``lane_ack_ms`` and the issue's ratios."""
    lanes, bulk_result = run_probes(target, rate=rate, warmup_s=warmup_s, duration_s=duration_s, during=bulk)
    wd, normal, critical = (lanes[k]["p99"] for k in LANES)
    bulk_eps = bulk_result["eps"]
    return {
        "probe_rate": rate,
        "today_weddings": len(TODAY_WEDDINGS),
        "lane_ack_ms": lanes,
        "wedding_day_p99_over_normal_p99": round(wd / normal, 3) if wd is not None and normal else None,
        "wedding_day_p99_over_critical_p99": round(wd / critical, 3) if wd is not None and critical else None,
        "bulk_eps": bulk_eps,
        "bulk_eps_vs_full_speed": round(bulk_eps / full_speed_eps, 3) if full_speed_eps else None,
        "bulk": {k: bulk_result[k] for k in ("sent", "acked", "rejected", "dropped", "critical_sdk_unacked")},
    }


def render(lanes: dict[str, dict[str, Any]]) -> str:
    rows = ["| lane | ack p50 | p90 | p99 | events | unacknowledged |", "| --- | --- | --- | --- | --- | --- |"]
    for lane in LANES:
        s = lanes[lane]
        cells = [f"{s[q]:,} ms" if s[q] is not None else "unknown" for q in ("p50", "p90", "p99")]
        rows.append(f"| {lane.replace('_', ' ')} | {' | '.join(cells)} | {s['events']:,} | {s['unacked']:,} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description="Per-lane ack latency against a running mesh under your own load.")
    parser.add_argument("--target", required=True, help="ingest host:port")
    parser.add_argument("--keyspace", required=True, help="the keyspace whose calendar ingest reads")
    parser.add_argument("--rate", type=float, default=20.0, help="events/s of each probe")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--no-prepare", action="store_true", help="the calendar is already in place")
    parser.add_argument("--json", help="also write the summaries to this file")
    args = parser.parse_args()
    if not args.no_prepare:
        prepare(args.keyspace)
    lanes, _ = run_probes(args.target, rate=args.rate, warmup_s=args.warmup, duration_s=args.duration)
    print(render(lanes))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(lanes, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
