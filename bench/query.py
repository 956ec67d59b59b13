"""The query benchmark: Search latency over a large, skewed store, cold and warm cache, alone
and while the pipeline benchmark's clients ingest at full speed.

    python -m bench.query            # >= 1M events over 1,000 weddings (loaded once, reused)
    python -m bench.query --smoke    # 20K events, seconds

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
from bench.report import RESULTS, git_commit, machine, redis_pid, update_readme, wait_for_quiet_store
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


def ensure_dataset(keyspace: str, events: int, weddings: int, processes: int = 2) -> tuple[int, int]:
    """Load the dataset once; what is loaded is remembered in the keyspace itself. Returns the
    dataset's events and the events earlier runs' under-load phases ingested on top of it.
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
    return int(loaded), int(meta.get("load_events", 0))


def _count_load(keyspace: str, acked: int) -> None:
    """Remember the events an under-load phase ingested into the keyspace."""
    store = EventStore.connect(StoreConfig(keyspace=keyspace))
    row = store.session.execute(f"SELECT value FROM {keyspace}.bench_meta WHERE name = 'load_events'").one()
    total = (row.value if row else 0) + acked
    store.session.execute(f"INSERT INTO {keyspace}.bench_meta (name, value) VALUES ('load_events', {total})")
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
    callers, each as fast as it can or, with ``rate``, starting a query every 1/rate s;
    ``before_each`` runs before each timed query, outside its time."""
    latencies: dict[str, list[float]] = {}
    by_cache: dict[str, list[float]] = {}  # by the query service's "auditmesh-cache" trailer
    count = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        end = time.monotonic() + duration_s
        position = 0
        next_at = time.monotonic()

        async def worker() -> None:
            nonlocal count, position, next_at
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
                    if rate:
                        next_at += 1 / rate
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    started = time.perf_counter()
                    call = stub.Search(request, timeout=10)
                    async for page in call:
                        token = page.next_page_token
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    latencies.setdefault(kind, []).append(elapsed_ms)
                    trailers = dict(await call.trailing_metadata() or ())
                    by_cache.setdefault(trailers.get(CACHE_TRAILER, "unknown"), []).append(elapsed_ms)
                    count += 1
                    if not token:
                        break

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    every = sorted(v for values in latencies.values() for v in values)
    return {
        "queries": count,
        "queries_per_s": round(count / elapsed, 1),
        "p50_ms": percentile(every, 50),
        "p99_ms": percentile(every, 99),
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


def _hit_share(phase: dict[str, Any]) -> str:
    counts = {k: v["n"] for k, v in phase.get("by_cache", {}).items()}
    total = sum(counts.values())
    return f"{counts.get('hit', 0) / total:.0%}" if total else "-"


def _ingest(phase: dict[str, Any]) -> str:
    eps = phase.get("ingest_eps")
    return f"{LOADED_QUERY_RATE:.0f} queries/s while ingest accepted {eps:,.0f} ev/s" if eps is not None else "-"


def render_query(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "not measured" if v is None else f"{v:.2f} ms"

    rows = [
        (
            "query p99, one page, alone (warm cache, one caller)",
            "-",
            f(r["query_p99_ms"]) + f" (p50 {f(r['query_p50_ms'])})",
        ),
        (
            "query p99, one page, under full ingest load",
            "< 10 ms",
            f(r["query_p99_ms_under_load"])
            + f" (p50 {f(r['query_p50_ms_under_load'])}; {_hit_share(r['under_load'])} from the cache; "
            + f"{_ingest(r['under_load'])})",
        ),
        (
            "the same, the query path (caller, query service, Redis) at real-time CPU priority",
            "-",
            f(r.get("query_p99_ms_under_load_realtime"))
            + f" (p50 {f(r.get('query_p50_ms_under_load_realtime'))}; "
            + f"{_hit_share(r.get('under_load_realtime') or {})} from the cache; "
            + f"{_ingest(r.get('under_load_realtime') or {})})",
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
    lines += [
        "",
        f"{r['dataset_events']:,} events over {r['weddings']:,} weddings (Zipf-like skew) queried"
        + (
            f", in a store of {r['events_stored']:,} (the rest ingested into other weddings and users "
            "by earlier runs' under-load phases)"
            if r["events_stored"] > r["dataset_events"]
            else ""
        )
        + f"; {m['cpus']} cores, everything on one machine. Run {r['started']} at commit "
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
    dataset, earlier_load = ensure_dataset(keyspace, args.events, args.weddings)
    run_dir = Path(tempfile.mkdtemp(prefix="auditmesh-qbench-"))
    layout = MeshLayout(
        ingest_port=25051,
        processor_base_port=25061,
        processors=2,
        query_port=25071,
        keyspace=keyspace,
        extra_env={"AUDITMESH_TOKEN_KEY": "qbench", "AUDITMESH_REDIS_URL": "redis://127.0.0.1:6379/13"},
    )
    supervisor = Supervisor(run_dir)
    rng = random.Random(42)
    mix = _queries(args.weddings, rng)
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "events_stored": dataset + earlier_load,
        "dataset_events": dataset,
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
                    "weddings": 1000,
                    "warmup_s": 2.0,
                    "duration_s": 2 * args.duration + 16,
                    "rate": 0.0,
                    "streams": 2,
                    "log_dir": str(run_dir),
                    "start_at": start_at,
                },
            )
            proc.start()
            loaders.append((proc, parent))
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
        ingest = [conn.recv() for _, conn in loaders]
        for proc, _ in loaders:
            proc.join(30)
        _count_load(keyspace, sum(r["acked"] for r in ingest))
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
            "ingest_eps_during_load": round(sum(r["acked_in_window"] / r["window_s"] for r in ingest), 1),
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
            "machine": machine(),
            "git_commit": git_commit(),
            "command": "python -m bench.query" + (" --smoke" if args.smoke else ""),
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    required = (
        "events_stored",
        "weddings",
        "query_p50_ms",
        "query_p99_ms",
        "query_p99_ms_under_load",
        "cached_p99_ms",
        "cache_hit_rate",
        "queries_per_s",
        "machine",
        "git_commit",
    )
    missing = [k for k in required if k not in result]
    assert not missing, f"result lacks {missing}"
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
