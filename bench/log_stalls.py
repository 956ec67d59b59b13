"""Where the slow ``AuditClient.log()`` calls come from.

    auditmesh up && python -m bench.log_stalls [--seconds 20] [--nice 0] [--producers 2]

Runs ``--producers`` processes against the running mesh, each calling ``log()`` at full speed
(waiting while more than 100,000 events are pending, as the pipeline benchmark's producers
do) and, right after each call, an empty function with the same arguments: the same thread
under the same conditions, without the SDK. Every call is timed; each call over 5 us is put
down to the first cause that applies: the garbage collector ran during it, the thread was
preempted (an involuntary context switch), it blocked (a voluntary switch: waiting for the
GIL), it took a page fault, or none of these (the CPU was slow: interrupts, the hypervisor,
cache misses). If ``log()``'s p99 is
the empty function's, the SDK adds nothing a caller could measure on this machine.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from auditmesh.client import AuditClient
from auditmesh.metrics import percentile
from auditmesh.synthetic import Synthetic

SLOW_NS = 5_000
CAUSES = ("gc", "preempted", "blocked", "page fault", "none")


def _empty(event_type: str, **fields: Any) -> None:
    return None


class _Calls:
    """Timings of one kind of call, and the cause of each slow one."""

    def __init__(self) -> None:
        self.ns: list[int] = []
        self.slow: list[tuple[int, int, int, int, int]] = []

    def clear(self) -> None:
        self.ns.clear()
        self.slow.clear()

    def report(self, collections: list[tuple[int, int]]) -> dict[str, Any]:
        causes: dict[str, list[int]] = {c: [] for c in CAUSES}
        for t0, t1, involuntary, voluntary, faults in self.slow:
            if any(g0 < t1 and g1 > t0 for g0, g1 in collections):
                cause = "gc"
            elif involuntary:
                cause = "preempted"
            elif voluntary:
                cause = "blocked"
            elif faults:
                cause = "page fault"
            else:
                cause = "none"
            causes[cause].append(t1 - t0)
        ordered = sorted(self.ns)
        n = max(1, len(ordered))
        return {
            "calls": len(ordered),
            "p50_ns": percentile(ordered, 50),
            "p99_ns": percentile(ordered, 99),
            "p999_ns": percentile(ordered, 99.9),
            "slow_share": len(self.slow) / n,
            "causes": {c: (len(v) / n, percentile(sorted(v), 50)) for c, v in causes.items()},
        }


def _measure(conn: Connection, target: str, seconds: float, nice: int, seed: int) -> None:
    os.nice(nice)
    events = list(Synthetic(weddings=1000, seed=seed).events(20_000))
    client = AuditClient(target, source_service="log-stalls")
    collections: list[tuple[int, int]] = []
    started_gc = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started_gc[0] = time.perf_counter_ns()
        else:
            collections.append((started_gc[0], time.perf_counter_ns()))

    gc.callbacks.append(on_gc)
    clock, usage, thread = time.perf_counter_ns, resource.getrusage, resource.RUSAGE_THREAD
    calls = {"log()": _Calls(), "empty function": _Calls()}
    functions: list[tuple[Callable[..., Any], _Calls]] = [
        (client.log, calls["log()"]),
        (_empty, calls["empty function"]),
    ]
    sent = 0
    warm_until = time.monotonic() + 2
    end = warm_until + seconds
    while (now := time.monotonic()) < end:
        if now < warm_until:
            for c in calls.values():
                c.clear()
            collections.clear()
        if sent % 1000 == 0 and client.stats.pending > 100_000:
            time.sleep(0.002)  # the producers' pace: wait while the pipeline catches up
            continue
        kwargs = events[sent % len(events)]
        sent += 1
        for function, timings in functions:
            before = usage(thread)
            t0 = clock()
            function(**kwargs)
            t1 = clock()
            after = usage(thread)
            timings.ns.append(t1 - t0)
            if t1 - t0 > SLOW_NS:
                timings.slow.append(
                    (
                        t0,
                        t1,
                        after.ru_nivcsw - before.ru_nivcsw,
                        after.ru_nvcsw - before.ru_nvcsw,
                        after.ru_minflt - before.ru_minflt,
                    )
                )
    client.close(timeout=30)
    conn.send({name: c.report(collections) for name, c in calls.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--nice", type=int, default=0, help="as the pipeline benchmark's producers (its --load-nice)")
    parser.add_argument("--producers", type=int, default=2)
    args = parser.parse_args()
    runs: list[tuple[mp.Process, Connection]] = []
    for i in range(args.producers):
        parent, child = mp.Pipe(duplex=False)
        proc = mp.Process(target=_measure, args=(child, args.target, args.seconds, args.nice, 7 + i))
        proc.start()
        runs.append((proc, parent))
    print(f"{'call':20} {'calls':>9} {'p50':>7} {'p99':>8} {'p99.9':>9}  over 5 us, by cause (share, median)")
    for i, (proc, conn) in enumerate(runs):
        for kind, r in conn.recv().items():
            name = f"{kind} #{i}"
            causes = ", ".join(f"{c} {share:.2%} {(med or 0) / 1000:.0f} us" for c, (share, med) in r["causes"].items())
            print(
                f"{name:20} {r['calls']:>9,} {r['p50_ns'] / 1000:>5.1f}us {r['p99_ns'] / 1000:>6.1f}us "
                f"{r['p999_ns'] / 1000:>7.0f}us  {r['slow_share']:.2%}: {causes}"
            )
        proc.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
