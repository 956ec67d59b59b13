"""One load-generating process: an AuditClient driven at full speed or at a fixed rate.

Besides the acknowledged count it times, for every event, the ``AuditClient.log()`` call and,
right after it in the same thread, a call of an empty function with the same arguments; both
go into reservoirs of the same size, so the two are sampled the same way. The empty call is the
floor: what any in-process call with these arguments costs in this thread on this machine,
interrupts, preemption and cache misses included. For every 50th event it also times an stdlib
``logging.info`` of the same fields to a file handler (writing a file line per event would
slow the producer down to the file's pace).

Critical (P0) events are timed from ``log()`` to their acknowledgement, whatever happened in
between (a RETRY and a resend, a lost stream): the time starts when the caller logged the event
(its ``occurred_at``), not when ingest last received it.
"""

from __future__ import annotations

import logging
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from auditmesh.client import AuditClient
from auditmesh.metrics import Reservoir
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb

__all__ = ["run_client"]

STDLIB_EVERY = 50


class _CriticalTimedClient(AuditClient):
    """An AuditClient that also records, for every P0 event it gets an OK ack for, the time from
    its ``log()`` to that ack (``occurred_at`` is the time ``log()`` was called, and a resend
    keeps it), from the moment ``measure_from_ns`` (wall clock) on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.measure_from_ns = 2**63  # nothing is recorded until the window opens
        self.critical_ack_ns: list[int] = []
        self.critical_rejected = 0

    def _on_ack(self, ack: pb.BatchAck, in_flight: dict[str, Any]) -> None:
        batch = in_flight.get(ack.batch_id)
        if batch is not None and batch.critical and ack.status == pb.ACK_STATUS_OK and batch in self._open:
            now = time.time_ns()
            rejected = {r.index for r in ack.rejected}
            for i, ev in enumerate(batch.msg.events):
                if ev.severity != pb.P0_CRITICAL:
                    continue
                logged = ev.occurred_at.seconds * 1_000_000_000 + ev.occurred_at.nanos
                if logged < self.measure_from_ns:
                    continue
                if i in rejected:
                    self.critical_rejected += 1
                else:
                    self.critical_ack_ns.append(now - logged)
        super()._on_ack(ack, in_flight)


def _empty(event_type: str, **fields: Any) -> None:
    return None


def run_client(
    conn: Connection,
    *,
    target: str,
    index: int,
    weddings: int,
    warmup_s: float,
    duration_s: float,
    rate: float,
    streams: int,
    log_dir: str,
    start_at: float,
    linger_ms: float | None = None,
    nice: int = 0,
    world: str = "",
    trace_env: dict[str, str] | None = None,
) -> None:
    """Drive one AuditClient and send what was measured through ``conn``. ``nice`` lowers this
    process's CPU priority (the pipeline benchmark gives its direct loader the same); ``world``
    names the weddings and users written (by default the generator's own, see Synthetic); with
    ``trace_env`` (OTEL_* variables) the client traces its batches as an application would."""
    if nice:
        os.nice(nice)
    if trace_env:
        # The calling application's tracer provider: the SDK's batch spans join the mesh's traces.
        from auditmesh.telemetry import tracing

        tracing.setup(f"auditmesh-bench-client-{index}", trace_env)
    synthetic = Synthetic(weddings=weddings, seed=100 + index, world=world)
    events = list(synthetic.events(20_000))
    stdlib = logging.getLogger(f"bench.stdlib.{index}")
    stdlib.propagate = False
    handler = logging.FileHandler(os.path.join(log_dir, f"stdlib-{index}.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    stdlib.addHandler(handler)
    stdlib.setLevel(logging.INFO)

    client = _CriticalTimedClient(
        target,
        source_service=f"bench-{index}",
        streams=streams,
        record_ack_latency=True,
        **({} if linger_ms is None else {"linger_ms": linger_ms}),
    )
    log_ns = Reservoir(50_000, seed=index)
    stdlib_ns = Reservoir(50_000, seed=index + 1000)
    empty_ns = Reservoir(50_000, seed=index + 2000)
    clock = time.perf_counter_ns
    while time.time() < start_at:
        time.sleep(0.005)
    t0 = time.monotonic()
    measure_from = t0 + warmup_s
    end = measure_from + duration_s
    acked_at_start: int | None = None
    sent = 0
    critical_logged = 0
    n = len(events)
    backlog_limit = 100_000
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if acked_at_start is None and now >= measure_from:
            acked_at_start = client.stats.acked
            client.measure_from_ns = time.time_ns()
            log_ns.reset()
            stdlib_ns.reset()
            empty_ns.reset()
            assert client.ack_latency_ns is not None
            client.ack_latency_ns.clear()
        if rate > 0:
            due = int((now - t0) * rate)
            if sent >= due:
                time.sleep(0.001)
                continue
        elif sent % 1000 == 0 and client.stats.pending > backlog_limit:
            time.sleep(0.002)  # a full-speed producer waits for the pipeline instead of overflowing
            continue
        kwargs = events[sent % n]
        started = clock()
        client.log(**kwargs)
        log_ns.add(clock() - started)
        started = clock()
        _empty(**kwargs)
        empty_ns.add(clock() - started)
        sent += 1
        if kwargs["severity"] == pb.P0_CRITICAL and acked_at_start is not None:
            critical_logged += 1
        if sent % STDLIB_EVERY == 0:
            started = clock()
            stdlib.info(
                "%s user=%s org=%s wedding=%s severity=%s outcome=%s resource=%s/%s ip=%s",
                kwargs["event_type"],
                kwargs["user_id"],
                kwargs["organization_id"],
                kwargs["wedding_id"],
                kwargs["severity"],
                kwargs["outcome"],
                kwargs["resource_type"],
                kwargs["resource_id"],
                kwargs["source_ip"],
            )
            stdlib_ns.add(clock() - started)
    acked_at_end = client.stats.acked
    elapsed = time.monotonic() - measure_from
    latencies = list(client.ack_latency_ns or [])
    client.close(timeout=60)
    stats = client.stats
    critical_ns = list(client.critical_ack_ns)
    result: dict[str, Any] = {
        "index": index,
        "sent": sent,
        "acked_in_window": acked_at_end - (acked_at_start or 0),
        "window_s": elapsed,
        "log_ns": log_ns.values,
        "stdlib_ns": stdlib_ns.values,
        "empty_ns": empty_ns.values,
        "ack_ns": latencies,
        "critical_ack_ns": critical_ns,
        # P0 events logged in the window that were neither acknowledged nor rejected by the end
        "critical_unacked": critical_logged - len(critical_ns) - client.critical_rejected,
        "final": vars(stats) if hasattr(stats, "__dict__") else stats.__repr__(),
        "acked": stats.acked,
        "rejected": stats.rejected,
        "dropped": stats.dropped,
        "resent": stats.resent,
    }
    conn.send(result)
    conn.close()
