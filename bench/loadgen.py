"""One load-generating process: an AuditClient driven at full speed or at a fixed rate.

Besides the acknowledged count it times every ``AuditClient.log()`` call in the calling thread,
and, for every 50th event, an stdlib ``logging.info`` of the same fields to a file handler and
a call of an empty function with the same arguments, in the same thread at the same moment:
the costs are measured under identical conditions. The empty call is the floor: what any
in-process call with these arguments costs in this thread on this machine, interrupts,
preemption and cache misses included.
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

__all__ = ["run_client"]

STDLIB_EVERY = 50


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
) -> None:
    # The load stands for the platform's backend services, which run on other hosts: it yields
    # the CPU to the system under test (services, Cassandra, Redis) on this shared machine.
    os.nice(10)
    synthetic = Synthetic(weddings=weddings, seed=100 + index)
    events = list(synthetic.events(20_000))
    stdlib = logging.getLogger(f"bench.stdlib.{index}")
    stdlib.propagate = False
    handler = logging.FileHandler(os.path.join(log_dir, f"stdlib-{index}.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    stdlib.addHandler(handler)
    stdlib.setLevel(logging.INFO)

    client = AuditClient(
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
    n = len(events)
    backlog_limit = 100_000
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if acked_at_start is None and now >= measure_from:
            acked_at_start = client.stats.acked
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
        sent += 1
        if sent % STDLIB_EVERY == 0:
            started = clock()
            _empty(**kwargs)
            empty_ns.add(clock() - started)
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
    result: dict[str, Any] = {
        "index": index,
        "sent": sent,
        "acked_in_window": acked_at_end - (acked_at_start or 0),
        "window_s": elapsed,
        "log_ns": log_ns.values,
        "stdlib_ns": stdlib_ns.values,
        "empty_ns": empty_ns.values,
        "ack_ns": latencies,
        "final": vars(stats) if hasattr(stats, "__dict__") else stats.__repr__(),
        "acked": stats.acked,
        "rejected": stats.rejected,
        "dropped": stats.dropped,
        "resent": stats.resent,
    }
    conn.send(result)
    conn.close()
