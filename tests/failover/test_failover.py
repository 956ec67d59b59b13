"""Failover under steady SDK load against real processes and this run's own three-node
Cassandra cluster (RF 3, LOCAL_QUORUM): losing any one component is a non-event. For each
fault the longest gap in acknowledgements the SDK saw (and in successful pages, for the query
fault) stays under 5 s, and every acknowledged event is found exactly once afterwards by a
query service reading at LOCAL_QUORUM (QUORUM: the cluster has one datacenter)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.cluster import Cluster as Driver
from cassandra.policies import WhiteListRoundRobinPolicy

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.sdk_query import QueryReplicas
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import assert_eventually
from tests.failover.conftest import GAP_BOUND_S, Cluster, FailoverLoad, GapWatch, record_gap
from tests.faults.conftest import SteadyLoad, search_load

pytestmark = [pytest.mark.faults, pytest.mark.failover]
RATE = 1000.0


def _sample_for(seconds: float, load: FailoverLoad, layout: MeshLayout, supervisor: Supervisor) -> None:
    """Wait, sampling the services' RSS every 0.2 s."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        load.sample_rss(supervisor, layout)
        time.sleep(0.2)


def run_failover(
    name: str, layout: MeshLayout, supervisor: Supervisor, cluster: Cluster, inject: Callable[[FailoverLoad], None]
) -> tuple[FailoverLoad, float]:
    """Steady load over both ingest replicas; ``inject`` the fault; then everything back, flush,
    and check every acknowledged event is stored exactly once, that acknowledgements never
    stopped for the bound and that no request waited for a dead processor. Returns the
    load and the gap."""
    load = FailoverLoad(layout.ingest_targets, rate=RATE).start()  # type: ignore[arg-type]
    assert_eventually(lambda: load.acked > 0, timeout=20)
    watch = GapWatch(lambda: load.acked).start()
    _sample_for(2, load, layout, supervisor)
    inject(load)
    # The load goes on after the fault for longer than the bound: a failover that never happens
    # shows as a gap over it.
    _sample_for(GAP_BOUND_S + 1, load, layout, supervisor)
    gap = watch.stop()
    cluster.infra("start-cassandra")  # everything back before the final check
    layout.start(supervisor)
    stats = load.stop()
    result = search_load(layout, load)
    slowest = load.slowest_critical_s
    record_gap(name, load, stats, result.found, result.duplicates, gap, slowest)
    assert stats.acked == stats.logged and stats.rejected == 0 and stats.dropped == 0, stats
    assert not result.missing, f"{len(result.missing)} acknowledged events missing"
    assert not result.extra, f"{len(result.extra)} events nobody logged"
    assert result.duplicates == 0, f"{result.duplicates} events returned more than once"
    assert result.found == stats.logged
    assert gap < GAP_BOUND_S, f"acknowledgements stopped for {gap:.2f}s"
    # A gap shows only when every batch waits. No request may have waited out a processor's
    # timeout either: requests to a dead processor must fail at once and be resent. (The slowest
    # P0 event is recorded, not bounded: on this shared two-core host it is mostly queueing.)
    timeouts = {m: n for m, n in load.retry_messages.items() if "did not answer" in m}
    assert not timeouts, f"requests waited out a processor's timeout: {timeouts}"
    return load, gap


def test_kill_one_of_two_ingest_replicas(
    replicated_mesh: MeshLayout, failover_supervisor: Supervisor, cluster: Cluster
) -> None:
    """The SDK resends the killed ingest's unacknowledged batches to the other replica at once."""

    def inject(load: FailoverLoad) -> None:
        failover_supervisor.kill("ingest")

    load, _ = run_failover("kill -9 one of two ingest replicas", replicated_mesh, failover_supervisor, cluster, inject)
    assert load.client is not None and load.client.stats.failovers >= 1


def test_kill_one_of_three_processors(
    replicated_mesh: MeshLayout, failover_supervisor: Supervisor, cluster: Cluster
) -> None:
    """Ingest reroutes a killed processor's batches to the other two within the bound."""

    def inject(load: FailoverLoad) -> None:
        failover_supervisor.kill("processor-1")

    run_failover("kill -9 one of three processors (replicated)", replicated_mesh, failover_supervisor, cluster, inject)


def _rows_on_node(store: StoreConfig, address: str, load: SteadyLoad) -> int:
    """Events of the load's weddings that the node at ``address`` holds itself (read at ONE there)."""
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]), request_timeout=30)
    driver = Driver([address], port=store.port, protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = driver.connect(store.keyspace)
        ids: set[str] = set()
        for wedding in load.wedding_ids:
            buckets = session.execute("SELECT bucket FROM partitions WHERE scope = 'w' AND key = %s", (wedding,))
            for row in buckets:
                rows = session.execute(
                    "SELECT event_id FROM events_by_wedding WHERE wedding_id = %s AND bucket = %s",
                    (wedding, row.bucket),
                )
                ids.update(r.event_id for r in rows)
        return len(ids)
    finally:
        driver.shutdown()


def test_kill_one_of_three_cassandra_nodes(
    replicated_mesh: MeshLayout, failover_supervisor: Supervisor, cluster: Cluster, cluster_store: StoreConfig
) -> None:
    """With one of three replicas killed, QUORUM writes go on; restarted, it ends up holding every event."""

    def inject(load: FailoverLoad) -> None:
        cluster.node(2, "kill")
        time.sleep(6)  # the node stays down while the load goes on
        cluster.node(2, "start")

    load, _ = run_failover(
        "kill -9 one of three Cassandra nodes, restart", replicated_mesh, failover_supervisor, cluster, inject
    )
    logged = sum(map(len, load.logged.values()))
    # Read after the QUORUM reads of the check: hints or read repair (which of them is not
    # told apart here) bring the restarted node every event it missed.
    assert_eventually(
        lambda: _rows_on_node(cluster_store, cluster.addresses[1], load) == logged, timeout=90, interval=2
    )


def test_kill_one_of_two_query_replicas_while_paging(
    replicated_mesh: MeshLayout, failover_supervisor: Supervisor, cluster: Cluster
) -> None:
    """A client paging through Search goes on at the other query replica from its last page."""
    pages: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: Counter[str] = Counter()

    def page_through(wedding: str) -> None:
        with QueryReplicas(replicated_mesh.query_targets) as replicas:
            try:
                while not stop.is_set():
                    # A call's deadline covers all its pages: short calls with a generous deadline keep
                    # a slow page (a Cassandra node that has just rejoined) from failing the reader.
                    request = pb.SearchRequest(wedding_id=wedding, page_size=50, max_pages=10)
                    for page in replicas.search(request, timeout=30):
                        pages.append(time.monotonic())
                        seen.update(ev.event_id for ev in page.events)
                        time.sleep(0.01)
                        if stop.is_set():
                            break
            except BaseException as exc:
                errors.append(exc)

    reader: list[threading.Thread] = []

    def inject(load: FailoverLoad) -> None:
        thread = threading.Thread(target=page_through, args=(load.wedding_ids[0],), daemon=True)
        reader.append(thread)
        thread.start()
        assert_eventually(lambda: len(pages) > 20, timeout=20)
        failover_supervisor.kill("query")
        time.sleep(3)

    try:
        run_failover(
            "kill -9 one of two query replicas while paging", replicated_mesh, failover_supervisor, cluster, inject
        )
    finally:
        stop.set()
        for thread in reader:
            thread.join(15)
    assert not errors, (
        f"paging failed after {len(pages)} pages"
        f" ({time.monotonic() - pages[-1] if pages else float('nan'):.1f}s after the last): {errors[0]!r}"
    )
    query_gap = max(b - a for a, b in zip(pages, pages[1:], strict=False))
    _record_query_gap(query_gap)
    assert query_gap < GAP_BOUND_S, f"no page for {query_gap:.2f}s"
    assert len(pages) > 40 and seen, "the reader did not keep paging"


def _record_query_gap(gap_s: float) -> None:
    from tests.failover.conftest import _record

    _record.entries[-1]["failover_s"] = max(_record.entries[-1]["failover_s"], round(gap_s, 2))
    _record.entries[-1]["query_gap_s"] = round(gap_s, 2)
