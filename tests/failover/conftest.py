"""Failover fixtures: this run's own three-node Cassandra cluster (RF 3, LOCAL_QUORUM) on
loopback addresses beside the shared node, a mesh on it with two ingest and two query replicas
and three processors, a load that measures the longest gap between acknowledgements, and the
record behind the README faults table's "failover" column (bench/results/failover-latest.json).

The cluster is started by ``deploy/local/infra.sh`` with AUDITMESH_CASSANDRA_NODES=3 and stopped
at the end of the session; the shared node on 127.0.0.1 is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import INFRA_SCRIPT, MeshLayout
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import (
    TEST_KEYSPACE,
    TEST_SLOT,
    slot_cassandra_address,
    slot_jmx_port,
    slot_port,
    slot_redis_url,
)
from tests.faults.conftest import FaultRecord, SteadyLoad

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "failover-latest.json"
_HERE = Path(__file__).resolve().parent
NODES = 3
GAP_BOUND_S = 5.0  # the specification's failover bound
PROCESSOR_TIMEOUT_S = 15


class Cluster:
    """This run's own Cassandra cluster, driven through deploy/local/infra.sh."""

    def __init__(self) -> None:
        self.addresses = [slot_cassandra_address(k) for k in range(1, NODES + 1)]
        self.env = {
            **os.environ,
            "AUDITMESH_CASSANDRA_NODES": str(NODES),
            "AUDITMESH_CASSANDRA_ADDRESS": self.addresses[0],
            "AUDITMESH_CASSANDRA_JMX_PORT": str(slot_jmx_port()),
            "AUDITMESH_CASSANDRA_CLUSTER": f"auditmesh-failover-test-{TEST_SLOT}",
        }

    def infra(self, *args: str) -> None:
        subprocess.run([str(INFRA_SCRIPT), *args], check=True, env=self.env)

    def node(self, k: int, action: str) -> None:
        """``infra.sh node K start|stop|kill``."""
        self.infra("node", str(k), action)


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """Three Cassandra nodes of this run's own, stopped once the failover tests are done (the rest of
    the suite does not share the machine with them)."""
    c = Cluster()
    try:
        c.infra("start-cassandra")
        yield c
    finally:
        c.infra("stop-cassandra")


@pytest.fixture(scope="package")
def cluster_store(cluster: Cluster) -> StoreConfig:
    """The test keyspace on the cluster, replicated three times, read and written at LOCAL_QUORUM."""
    cfg = StoreConfig(
        hosts=tuple(cluster.addresses),
        keyspace=TEST_KEYSPACE,
        replication_factor=NODES,
        consistency="LOCAL_QUORUM",
    )
    drop_keyspace(cfg)
    create_schema(cfg)
    return cfg


@pytest.fixture(scope="package")
def failover_layout(cluster_store: StoreConfig) -> MeshLayout:
    return MeshLayout(
        ingest_port=slot_port(28551),  # 27551 is the membership test's
        processor_base_port=slot_port(28561),
        processors=3,
        query_port=slot_port(28571),
        ingest_replicas=2,
        query_replicas=2,
        keyspace=TEST_KEYSPACE,
        monitor=False,
        extra_env={
            "AUDITMESH_TOKEN_KEY": "failover-key",
            "AUDITMESH_REDIS_URL": slot_redis_url(13),
            "AUDITMESH_CASSANDRA_HOSTS": ",".join(cluster_store.hosts),
            "AUDITMESH_REPLICATION_FACTOR": str(cluster_store.replication_factor),
            "AUDITMESH_CONSISTENCY": cluster_store.consistency,
            # Longer than the store's own request timeout (10 s), so a live processor always
            # answers first: a request that waits it out was sent to a dead processor.
            "AUDITMESH_PROCESSOR_TIMEOUT_S": str(PROCESSOR_TIMEOUT_S),
        },
    )


@pytest.fixture(scope="package")
def failover_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Supervisor:
    return Supervisor(Path(tmp_path_factory.mktemp("failover")))


@pytest.fixture(scope="package")
def failover_mesh(failover_layout: MeshLayout, failover_supervisor: Supervisor) -> Iterator[MeshLayout]:
    try:
        failover_layout.start(failover_supervisor)
        # A fresh cluster and fresh services are slow for their first seconds of load (JIT,
        # connections, first flushes): warm them up before any fault is timed.
        warm = AuditClient(failover_layout.ingest_targets, source_service="failover-warmup")
        for i in range(5000):
            warm.log("guestlist.viewed", user_id=f"warm-{i % 50}", wedding_id=f"warm-{i % 20}")
        assert warm.flush(180), "the warm-up load was not acknowledged"
        warm.close()
        yield failover_layout
    finally:
        failover_layout.stop(failover_supervisor)


@pytest.fixture()
def replicated_mesh(failover_mesh: MeshLayout, failover_supervisor: Supervisor, cluster: Cluster) -> MeshLayout:
    """Every node and service running (a previous test may have left one stopped)."""
    cluster.infra("start-cassandra")
    failover_mesh.start(failover_supervisor)
    return failover_mesh


class GapWatch:
    """Samples a counter every 5 ms in a thread; the longest time it did not grow (from its
    first growth until ``stop``) is the gap a caller saw."""

    def __init__(self, read: Any) -> None:
        self._read = read
        self.longest = 0.0
        self.longest_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> GapWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        last_value = self._read()
        last_change = 0.0
        while not self._stop.wait(0.005):
            value = self._read()
            now = time.monotonic()
            if value != last_value:
                if last_change and now - last_change > self.longest:
                    self.longest, self.longest_at = now - last_change, last_change
                last_value, last_change = value, now
        if last_change and time.monotonic() - last_change > self.longest:
            self.longest = time.monotonic() - last_change

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.longest


class _CriticalTimedClient(AuditClient):
    """An AuditClient that records, for every P0 event acknowledged OK, the time from its
    ``log()`` (its ``occurred_at``, kept by resends) to that ack, and the message of every
    RETRY ack."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.critical_ack_ns: list[int] = []
        self.retry_messages: Counter[str] = Counter()

    def _on_ack(self, ack: pb.BatchAck, in_flight: dict[str, Any]) -> None:
        if ack.status == pb.ACK_STATUS_RETRY:
            self.retry_messages[ack.message] += 1
        batch = in_flight.get(ack.batch_id)
        if batch is not None and batch.critical and ack.status == pb.ACK_STATUS_OK and batch in self._open:
            now = time.time_ns()
            for ev in batch.msg.events:
                if ev.severity == pb.P0_CRITICAL:
                    self.critical_ack_ns.append(now - ev.occurred_at.ToNanoseconds())
        super()._on_ack(ack, in_flight)


class FailoverLoad(SteadyLoad):
    """The fault tests' steady load, over several ingest targets, timing every P0 event."""

    def start(self) -> FailoverLoad:
        self.client = _CriticalTimedClient(
            self.target,
            source_service="failover",
            batch_size=200,
            linger_ms=10,
            max_pending_events=self.max_pending_events,
        )
        self.started = time.monotonic()
        self._thread.start()
        return self

    @property
    def retry_messages(self) -> Counter[str]:
        assert isinstance(self.client, _CriticalTimedClient)
        return self.client.retry_messages

    @property
    def slowest_critical_s(self) -> float:
        """The longest any P0 event waited from log() to its ack, resends included."""
        assert isinstance(self.client, _CriticalTimedClient)
        return max(self.client.critical_ack_ns, default=0) / 1e9


class FailoverRecord(FaultRecord):
    """The fault record with the longest gap each fault caused."""

    def add_gap(
        self,
        name: str,
        test: str,
        load: SteadyLoad,
        stats: Any,
        found: int,
        duplicates: int,
        gap_s: float,
        slowest_s: float,
    ) -> None:
        self.add(name, test, load, stats, found, duplicates, None)
        self.entries[-1]["failover_s"] = round(gap_s, 2)
        self.entries[-1]["slowest_p0_s"] = round(slowest_s, 2)


_record = FailoverRecord()
_current_test = [""]


def _is_failover_test(item: pytest.Item) -> bool:
    return _HERE in Path(str(item.path)).resolve().parents


@pytest.fixture(autouse=True)
def _failover_test_id(request: pytest.FixtureRequest) -> Iterator[None]:
    _current_test[0] = request.node.nodeid
    yield
    _current_test[0] = ""


def pytest_deselected(items: list[pytest.Item]) -> None:
    _record.not_selected.extend(item.nodeid for item in items if _is_failover_test(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/failover/"):
        _record.outcome(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the record of a run that measured any failover, saying whether it passed and ran every failover test."""
    if not _record.entries:
        return
    tests = [item.nodeid for item in session.items if _is_failover_test(item)]
    doc = _record.document(tests, int(exitstatus), session.testsfailed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


def record_gap(
    name: str, load: SteadyLoad, stats: Any, found: int, duplicates: int, gap_s: float, slowest_s: float
) -> None:
    """Add this fault's measured values, gap and slowest batch to the run's record, tied to the
    running test's outcome."""
    _record.add_gap(name, _current_test[0], load, stats, found, duplicates, gap_s, slowest_s)
