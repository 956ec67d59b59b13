"""The query benchmark: Search latency over a large, skewed store, cold and warm cache, alone
and while the pipeline benchmark's clients ingest at full speed.

    python -m bench.query            # >= 1M events over 1,000 weddings (loaded once, reused)
    python -m bench.query --smoke    # 20K events, seconds

Under load, queries are started on a fixed schedule (``LOADED_QUERY_RATE``) and each is timed
twice: its service time (from when it started) and its response time from when it was due, as
wrk2 and HdrHistogram's corrected mode do, so that a query held up behind a slow one is not
left out. The load writes into other weddings and users (so cached pages stay valid: what the
query path costs under load) and then, in a phase of its own, into the queried weddings and
users (so writes retire cached pages as they would in production).

Writes ``bench/results/query-latest.json`` and rewrites the README's query section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout, infra
from auditmesh.metrics import percentile
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.store import EventStore
from auditmesh.supervisor import Supervisor
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from bench.loadgen import run_client
from bench.report import (
    BENCH_REDIS_URL,
    RESULTS,
    git_commit,
    machine,
    redis_pid,
    update_readme,
    wait_for_quiet_store,
)
from services.query.servicer import CACHE_TRAILER

DAY_NS = 86_400 * 10**9
WORLD = "q"
"""The dataset's weddings and users: every loader process writes the same ones."""
LOADED_QUERY_RATE = 50.0
"""Queries per second while ingest runs at full speed, the same in every such phase, so a
faster query path does not take more of the cores from ingest by asking more often."""
DATASET_LAYOUT = 2
"""Bumped when the dataset's ids change, so a keyspace loaded by older code is loaded anew."""


def _load_part(keyspace: str, index: int, count: int, weddings: int) -> None:
    """Write ``count`` events of the dataset straight to the store (setup, not measured)."""

    async def go() -> None:
        store = EventStore.connect(StoreConfig(keyspace=keyspace))
        rng = random.Random(index)
        now = time.time_ns()
        batch: list[pb.Event] = []
        sem = asyncio.Semaphore(4)
        tasks = []

        async def write(events: list[pb.Event]) -> None:
            async with sem:
                await store.write(events)

        for i, kwargs in enumerate(Synthetic(weddings=weddings, seed=1000 + index, world=WORLD).events(count)):
            ev = pb.Event(event_id=f"q{index}-{i}", **kwargs)
            ev.occurred_at.FromNanoseconds(now - rng.randrange(5 * DAY_NS))
            ev.priority = 100
            batch.append(ev)
            if len(batch) == 500:
                tasks.append(asyncio.create_task(write(batch)))
                batch = []
                if len(tasks) > 8:
                    await asyncio.gather(*tasks)
                    tasks = []
        if batch:
            tasks.append(asyncio.create_task(write(batch)))
        await asyncio.gather(*tasks)
        store.close()

    asyncio.run(go())


def ensure_dataset(keyspace: str, events: int, weddings: int, processes: int = 2) -> tuple[int, int, int]:
    """Load the dataset once; what is loaded is remembered in the keyspace itself. Returns the
    dataset's events and the events earlier runs' under-load phases ingested on top of it, into
    other weddings and users and into the queried ones.
    A keyspace holding another layout of the dataset is dropped and loaded anew."""
    cfg = StoreConfig(keyspace=keyspace)
    create_schema(cfg)
    store = EventStore.connect(cfg)
    session = store.session
    session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.bench_meta (name text PRIMARY KEY, value bigint)")
    meta = {r.name: r.value for r in session.execute(f"SELECT name, value FROM {keyspace}.bench_meta")}
    if meta and meta.get("layout") != DATASET_LAYOUT:
        print(f"{keyspace} holds an older layout of the dataset: dropping it", flush=True)
        store.close()
        drop_keyspace(cfg)
        return ensure_dataset(keyspace, events, weddings, processes)
    loaded = meta.get("events", 0)
    if loaded < events:
        print(f"loading {events:,} events over {weddings:,} weddings into {keyspace} (once)...", flush=True)
        started = time.monotonic()
        per = events // processes
        procs = [mp.Process(target=_load_part, args=(keyspace, i, per, weddings)) for i in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError("dataset load failed")
        loaded = per * processes
        session.execute(f"INSERT INTO {keyspace}.bench_meta (name, value) VALUES ('layout', {DATASET_LAYOUT})")
        session.execute(f"INSERT INTO {keyspace}.bench_meta (name, value) VALUES ('events', {loaded})")
        print(f"loaded in {time.monotonic() - started:.0f}s", flush=True)
    store.close()
    return int(loaded), int(meta.get("load_events", 0)), int(meta.get("queried_load_events", 0))


def _count_load(keyspace: str, acked: int, name: str = "load_events") -> None:
    """Remember the events an under-load phase ingested into the keyspace (``load_events``: into
    other weddings and users; ``queried_load_events``: into the queried ones)."""
    store = EventStore.connect(StoreConfig(keyspace=keyspace))
    row = store.session.execute(f"SELECT value FROM {keyspace}.bench_meta WHERE name = '{name}'").one()
    total = (row.value if row else 0) + acked
    store.session.execute(f"INSERT INTO {keyspace}.bench_meta (name, value) VALUES ('{name}', {total})")
    store.close()


def _queries(weddings: int, rng: random.Random) -> list[tuple[str, pb.SearchRequest, int]]:
    """The query mix: (kind, request, pages to follow)."""
    synthetic = Synthetic(weddings=weddings, world=WORLD)
    mix: list[tuple[str, pb.SearchRequest, int]] = []
    for _ in range(200):
        k = min(int(rng.paretovariate(0.8)) - 1, weddings - 1)  # skewed: big weddings asked most
        wedding = synthetic.wedding_id(k)
        roll = rng.random()
        if roll < 0.4:
            mix.append(("recent", pb.SearchRequest(wedding_id=wedding, page_size=50), 1))
        elif roll < 0.55:
            mix.append(("severity", pb.SearchRequest(wedding_id=wedding, page_size=50, min_severity=pb.P1_HIGH), 1))
        elif roll < 0.7:
            mix.append(
                (
                    "type",
                    pb.SearchRequest(
                        wedding_id=wedding, page_size=50, event_types=["guestlist.export", "payment.viewed"]
                    ),
                    1,
                )
            )
        elif roll < 0.85:
            user = synthetic.user_id(k, rng.randrange(synthetic.users_per_wedding))
            mix.append(("user", pb.SearchRequest(user_id=user, page_size=50), 1))
        else:
            mix.append(("deep", pb.SearchRequest(wedding_id=wedding, page_size=100), 10))
    return mix


async def run_queries(
    target: str,
    mix: list[tuple[str, pb.SearchRequest, int]],
    duration_s: float,
    concurrency: int = 4,
    once: bool = False,
    before_each: Callable[[], None] | None = None,
    rate: float = 0.0,
) -> dict[str, Any]:
    """Run the mix round-robin for ``duration_s`` (or through it once) from ``concurrency``
    callers, each as fast as it can or, with ``rate``, on a schedule of one query every 1/rate s;
    ``before_each`` runs before each timed query, outside its time.

    Each query's service time is from its start to its last page. On a schedule, its response
    time is also taken from when it was due: a query that starts late because the one before
    it was slow counts the wait, and a query that was due before the end but never started
    counts the time from when it was due to the end, at least (no coordinated omission)."""
    latencies: dict[str, list[float]] = {}
    by_cache: dict[str, list[float]] = {}  # by the query service's "auditmesh-cache" trailer
    from_schedule: list[float] = []
    count = scheduled = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        end = time.monotonic() + duration_s
        position = 0
        begun = next_at = time.perf_counter()

        async def worker() -> None:
            nonlocal count, scheduled, position, next_at
            while time.monotonic() < end and not (once and position >= len(mix)):
                kind, req, pages = mix[position % len(mix)]
                position += 1
                token = ""
                for _ in range(pages):
                    request = pb.SearchRequest()
                    request.CopyFrom(req)
                    request.page_token = token
                    if before_each is not None:
                        before_each()
                    due = 0.0
                    if rate:
                        next_at += 1 / rate
                        scheduled += 1
                        due = next_at
                        await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    started = time.perf_counter()
                    call = stub.Search(request, timeout=10)
                    async for page in call:
                        token = page.next_page_token
                    ended = time.perf_counter()
                    elapsed_ms = (ended - started) * 1000
                    if rate:
                        from_schedule.append((ended - due) * 1000)
                    latencies.setdefault(kind, []).append(elapsed_ms)
                    trailers = dict(await call.trailing_metadata() or ())
                    by_cache.setdefault(trailers.get(CACHE_TRAILER, "unknown"), []).append(elapsed_ms)
                    count += 1
                    if not token:
                        break

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    stopped = time.perf_counter()
    unstarted = max(0, int(duration_s * rate) - scheduled) if rate else 0
    for k in range(scheduled, scheduled + unstarted):  # due within the run, never started
        from_schedule.append((stopped - (begun + (k + 1) / rate)) * 1000)
    every = sorted(v for values in latencies.values() for v in values)
    response = sorted(from_schedule)
    return {
        "queries": count,
        "queries_per_s": round(count / elapsed, 1),
        "p50_ms": percentile(every, 50),  # service time: from the query's start
        "p99_ms": percentile(every, 99),
        "from_schedule_p50_ms": percentile(response, 50),  # response time: from when it was due
        "from_schedule_p99_ms": percentile(response, 99),
        "due_never_started": unstarted,  # counted with their wait until the end, a lower bound
        "by_kind": _summaries(latencies),
        "by_cache": _summaries(by_cache),
    }


def _summaries(latencies: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        k: {"n": len(v), "p50_ms": percentile(sorted(v), 50), "p99_ms": percentile(sorted(v), 99)}
        for k, v in latencies.items()
    }


def _set_realtime(pid: int, on: bool) -> None:
    """Give every thread of ``pid`` round-robin real-time priority (or take it back): the
    query path then runs as if it had cores of its own, which on this host it does not."""
    policy, param = (os.SCHED_RR, os.sched_param(10)) if on else (os.SCHED_OTHER, os.sched_param(0))
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(int(tid), policy, param)


def _query_phase(
    conn: Connection, target: str, mix: list[tuple[str, pb.SearchRequest, int]], duration_s: float, realtime: bool
) -> None:
    """One caller running the mix in a process of its own, with real-time priority if asked
    (before any thread is started, so gRPC's threads inherit it)."""
    if realtime:
        _set_realtime(os.getpid(), True)
    conn.send(asyncio.run(run_queries(target, mix, duration_s, 1, rate=LOADED_QUERY_RATE)))
    conn.close()


def _run_phase(
    target: str, mix: list[tuple[str, pb.SearchRequest, int]], duration_s: float, realtime: bool
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_query_phase, args=(child, target, mix, duration_s, realtime))
    proc.start()
    result: dict[str, Any] = parent.recv()
    proc.join(30)
    return result


def _with_ingest_rate(supervisor: Supervisor, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``phase`` and add the events/s ingest accepted meanwhile (from its published stats)."""
    before, started = (supervisor.stats("ingest") or {}).get("accepted", 0), time.monotonic()
    result = phase()
    time.sleep(2.5)  # the counters are published every 2 s
    after, elapsed = (supervisor.stats("ingest") or {}).get("accepted", 0), time.monotonic() - started
    result["ingest_eps"] = round((after - before) / elapsed, 1)
    return result


def _cache_stats(supervisor: Supervisor) -> dict[str, Any]:
    time.sleep(2.5)  # the query service publishes its counters every 2 s
    return dict((supervisor.stats("query") or {}).get("cache") or {})


def _hit_fraction(phase: dict[str, Any]) -> float | None:
    """The share of a phase's calls answered from the cache (by the query service's trailer)."""
    counts = {k: v["n"] for k, v in phase.get("by_cache", {}).items()}
    total = sum(counts.values())
    return round(counts.get("hit", 0) / total, 4) if total else None


def _hit_share(phase: dict[str, Any]) -> str:
    share = _hit_fraction(phase)
    return "-" if share is None else f"{share:.0%}"


def _start_load(
    layout: MeshLayout, run_dir: Path, duration_s: float, *, weddings: int, world: str
) -> list[tuple[mp.Process, Connection]]:
    """Two SDK clients ingesting at full speed for ``duration_s`` (after 2 s of warm-up) into
    the weddings and users of ``world`` (by default their own, which no query asks for)."""
    start_at = time.time() + 1.0
    loaders = []
    for i in range(2):
        parent, child = mp.Pipe(duplex=False)
        proc = mp.Process(
            target=run_client,
            kwargs={
                "conn": child,
                "target": layout.ingest_target,
                "index": i,
                "weddings": weddings,
                "warmup_s": 2.0,
                "duration_s": duration_s,
                "rate": 0.0,
                "streams": 2,
                "log_dir": str(run_dir),
                "start_at": start_at,
                # The load stands for the platform's backend services, which run on other hosts:
                # it yields the CPU to the system under test on this shared machine.
                "nice": 10,
                "world": world,
            },
        )
        proc.start()
        loaders.append((proc, parent))
    return loaders


def _finish_load(loaders: list[tuple[mp.Process, Connection]]) -> list[dict[str, Any]]:
    results = [conn.recv() for _, conn in loaders]
    for proc, _ in loaders:
        proc.join(30)
    return results


def _ingest(phase: dict[str, Any]) -> str:
    eps = phase.get("ingest_eps")
    return f"{LOADED_QUERY_RATE:.0f} queries/s while ingest accepted {eps:,.0f} ev/s" if eps is not None else "-"


def render_query(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "not measured" if v is None else f"{v:.2f} ms"

    def loaded(phase: dict[str, Any]) -> str:
        return (
            f"{f(phase.get('from_schedule_p99_ms'))} from the schedule (p50 {f(phase.get('from_schedule_p50_ms'))}; "
            f"service time p99 {f(phase.get('p99_ms'))}, p50 {f(phase.get('p50_ms'))}; {_hit_share(phase)} from "
            f"the cache; {_ingest(phase)}"
            + (
                f"; {phase['due_never_started']} queries due never started, counted as waiting until the end"
                if phase.get("due_never_started")
                else ""
            )
            + ")"
        )

    rows = [
        (
            "query p99, one page, alone (warm cache, one caller)",
            "-",
            f(r["query_p99_ms"]) + f" (p50 {f(r['query_p50_ms'])})",
        ),
        (
            "query p99, one page, under full ingest load into other weddings and users",
            "< 10 ms",
            loaded(r["under_load"]),
        ),
        (
            "the same, the query path (caller, query service, Redis) at real-time CPU priority",
            "-",
            loaded(r.get("under_load_realtime") or {}),
        ),
        (
            "query p99, one page, under full ingest load into the queried weddings and users",
            "< 10 ms",
            loaded(r.get("under_load_queried") or {}),
        ),
        ("cold-cache query p99", "-", f(r["cold_p99_ms"])),
        (
            "cached query p99 (calls answered from the cache)",
            "< 2 ms",
            f(r["cached_p99_ms"]) + f" (p50 {f(r.get('cached_p50_ms'))})",
        ),
        ("cache hit rate (warm phase)", "-", f"{r['cache_hit_rate']:.0%}" if r["cache_hit_rate"] is not None else "-"),
        ("queries/s (4 concurrent callers, alone)", "-", f"{r['queries_per_s']:,.0f} (p99 {f(r['busy']['p99_ms'])})"),
    ]
    lines = ["| measure | target | measured |", "| --- | --- | --- |"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    lines.append("| query kind (alone, warm) | n | p50 | p99 |")
    lines.append("| --- | --- | --- | --- |")
    for kind, v in sorted(r["warm"]["by_kind"].items()):
        lines.append(f"| {kind} | {v['n']} | {f(v['p50_ms'])} | {f(v['p99_ms'])} |")
    m = r["machine"]
    queried_load = r.get("queried_load_events", 0)
    lines += [
        "",
        f"{r['dataset_events']:,} events over {r['weddings']:,} weddings (Zipf-like skew) queried"
        + (f", plus {queried_load:,} ingested into them by earlier runs' under-load phases" if queried_load else "")
        + (
            f", in a store of {r['events_stored']:,} (the rest ingested into other weddings and users "
            "by earlier runs' under-load phases)"
            if r["events_stored"] > r["dataset_events"] + queried_load
            else ""
        )
        + f". Under load, {LOADED_QUERY_RATE:.0f} queries/s on a fixed schedule, each timed from when it was due "
        "and from when it started (service time); "
        + f"{m['cpus']} cores, everything on one machine. Run {r['started']} at commit "
        f"`{r['git_commit'][:10]}` with `{r['command']}`.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--weddings", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    keyspace = "auditmesh_query_bench"
    if args.smoke:
        args.events, args.weddings, args.duration, keyspace = 20_000, 100, 3.0, "auditmesh_qbench_smoke"
    infra("up")
    dataset, earlier_load, earlier_queried_load = ensure_dataset(keyspace, args.events, args.weddings)
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-qbench-"))
    layout = MeshLayout(
        ingest_port=25051,
        processor_base_port=25061,
        processors=2,
        query_port=25071,
        keyspace=keyspace,
        extra_env={"AUDITMESH_TOKEN_KEY": "qbench", "AUDITMESH_REDIS_URL": BENCH_REDIS_URL},
    )
    supervisor = Supervisor(run_dir)
    rng = random.Random(42)
    mix = _queries(args.weddings, rng)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "events_stored": dataset + earlier_load + earlier_queried_load,
        "dataset_events": dataset,
        "queried_load_events": earlier_queried_load,
        "weddings": args.weddings,
    }
    try:
        layout.start(supervisor)
        result["waited_for_quiet_store_s"] = wait_for_quiet_store(10.0 if args.smoke else 180.0)
        _flush_cache(layout)
        # Latency with one caller at a time (cold: the cache emptied before every query; warm:
        # the mix again with the cache filled), then throughput with four concurrent callers.
        cold_mix = [(kind, req, 1) for kind, req, _ in _queries(args.weddings, random.Random(7))]
        cold = asyncio.run(
            run_queries(
                layout.query_target, cold_mix, args.duration, 1, once=True, before_each=lambda: _flush_cache(layout)
            )
        )
        asyncio.run(run_queries(layout.query_target, mix, args.duration, 1, once=True))  # fills the cache
        before = _cache_stats(supervisor)
        warm = asyncio.run(run_queries(layout.query_target, mix, args.duration, 1))
        after = _cache_stats(supervisor)
        busy = asyncio.run(run_queries(layout.query_target, mix, args.duration, 4))
        hits = after.get("hits", 0) - before.get("hits", 0)
        misses = after.get("misses", 0) - before.get("misses", 0)
        loaders = _start_load(layout, run_dir, 2 * args.duration + 16, weddings=1000, world="")
        time.sleep(3.0)
        # The same load twice: as the host schedules it, then with the query path (the caller,
        # the query service and Redis) given real-time priority.
        loaded = _with_ingest_rate(
            supervisor, lambda: _run_phase(layout.query_target, mix, args.duration, realtime=False)
        )
        query_pid, redis_server = supervisor.pid("query"), redis_pid()
        try:
            for pid in (query_pid, redis_server):
                if pid is not None:
                    _set_realtime(pid, True)
            prioritized = _with_ingest_rate(
                supervisor, lambda: _run_phase(layout.query_target, mix, args.duration, realtime=True)
            )
        except PermissionError as exc:
            prioritized = {"p50_ms": None, "p99_ms": None, "not_measured": f"real-time priority refused: {exc}"}
        finally:
            for pid in (query_pid, redis_server):
                if pid is not None:
                    with contextlib.suppress(PermissionError):
                        _set_realtime(pid, False)
        ingest = _finish_load(loaders)
        _count_load(keyspace, sum(r["acked"] for r in ingest))
        # The same load into the queried weddings and users: every write retires the cached
        # pages of its partitions, as in production.
        loaders = _start_load(layout, run_dir, args.duration + 8, weddings=args.weddings, world=WORLD)
        time.sleep(3.0)
        before = _cache_stats(supervisor)
        queried = _with_ingest_rate(
            supervisor, lambda: _run_phase(layout.query_target, mix, args.duration, realtime=False)
        )
        after = _cache_stats(supervisor)
        queried["service_cache"] = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "misses")}
        ingest_queried = _finish_load(loaders)
        _count_load(keyspace, sum(r["acked"] for r in ingest_queried), "queried_load_events")
    finally:
        layout.stop(supervisor)
    result.update(
        {
            "query_p50_ms": warm["p50_ms"],
            "query_p99_ms": warm["p99_ms"],
            "query_p99_ms_under_load": loaded["p99_ms"],
            "query_p50_ms_under_load": loaded["p50_ms"],
            "query_p99_ms_under_load_realtime": prioritized["p99_ms"],
            "query_p50_ms_under_load_realtime": prioritized["p50_ms"],
            "query_p99_ms_under_load_from_schedule": loaded["from_schedule_p99_ms"],
            "query_p99_ms_under_load_realtime_from_schedule": prioritized.get("from_schedule_p99_ms"),
            "query_p99_ms_under_load_queried": queried["p99_ms"],
            "query_p99_ms_under_load_queried_from_schedule": queried["from_schedule_p99_ms"],
            "cache_hit_share_under_load_queried": _hit_fraction(queried),
            "ingest_eps_during_load": round(sum(r["acked_in_window"] / r["window_s"] for r in ingest), 1),
            "ingest_eps_during_queried_load": round(
                sum(r["acked_in_window"] / r["window_s"] for r in ingest_queried), 1
            ),
            "cold_p50_ms": cold["p50_ms"],
            "cold_p99_ms": cold["p99_ms"],
            "cached_p50_ms": warm["by_cache"].get("hit", {}).get("p50_ms"),
            "cached_p99_ms": warm["by_cache"].get("hit", {}).get("p99_ms"),
            "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "queries_per_s": busy["queries_per_s"],
            "busy": busy,
            "cold": cold,
            "warm": warm,
            "under_load": loaded,
            "under_load_realtime": prioritized,
            "under_load_queried": queried,
            "machine": machine(),
            "git_commit": git_commit(),
            "command": " ".join(["python -m bench.query", *sys.argv[1:]]),
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    required = (
        "events_stored",
        "weddings",
        "query_p50_ms",
        "query_p99_ms",
        "query_p99_ms_under_load",
        "query_p99_ms_under_load_from_schedule",
        "query_p99_ms_under_load_queried_from_schedule",
        "cache_hit_share_under_load_queried",
        "cached_p99_ms",
        "cache_hit_rate",
        "queries_per_s",
        "machine",
        "git_commit",
    )
    missing = [k for k in required if result.get(k) is None]
    if missing:
        print(f"the run measured no {', '.join(missing)}; no results written")
        return 1
    name = "query-smoke-latest.json" if args.smoke else "query-latest.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    print(render_query(result))
    if not args.smoke:
        update_readme(result, "<!-- bench:query:start -->", "<!-- bench:query:end -->", render_query(result))
    return 0


def _flush_cache(layout: MeshLayout) -> None:
    import redis

    redis.Redis.from_url(layout.extra_env["AUDITMESH_REDIS_URL"]).flushdb()


if __name__ == "__main__":
    raise SystemExit(main())
