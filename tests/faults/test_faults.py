"""Faults under steady load against the real services, Cassandra and Redis: after each one,
every event the SDK logged is acknowledged and returned by query exactly once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import grpc
import pytest

from auditmesh.mesh import MeshLayout, infra
from auditmesh.supervisor import Supervisor, wait_healthy
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.faults.conftest import SteadyLoad, record, search_load
from tests.faults.proxy import Relay

pytestmark = pytest.mark.faults
SERVICE_RSS_BOUND_MB = 400  # ingest and processors while the store is down; see README


def run_fault(
    name: str,
    layout: MeshLayout,
    supervisor: Supervisor,
    inject: Callable[[SteadyLoad], float | None],
    *,
    target: str | None = None,
    rate: float = 1500.0,
) -> SteadyLoad:
    load = SteadyLoad(target or layout.ingest_target, rate=rate).start()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        load.sample_rss(supervisor, layout)
        time.sleep(0.2)
    assert load.acked > 0, "no events acknowledged before the fault"
    recovery = inject(load)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        load.sample_rss(supervisor, layout)
        time.sleep(0.2)
    layout.start(supervisor)  # everything back before the final check
    stats = load.stop()
    result = search_load(layout, load)
    record(name, load, stats, result.found, result.duplicates, recovery)
    assert stats.acked == stats.logged and stats.rejected == 0 and stats.dropped == 0, stats
    assert not result.missing, f"{len(result.missing)} acknowledged events missing"
    assert not result.extra, f"{len(result.extra)} events nobody logged"
    assert result.duplicates == 0, f"{result.duplicates} events returned more than once"
    assert result.found == stats.logged
    return load


def test_kill_ingest_and_restart(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    def inject(load: SteadyLoad) -> float:
        fault_supervisor.kill("ingest")
        time.sleep(1)
        fault_supervisor.start(healthy_mesh.ingest())
        return load.wait_for_progress()

    load = run_fault("kill -9 ingest, restart", healthy_mesh, fault_supervisor, inject)
    assert load.client is not None and load.client.stats.resent > 0


def test_kill_one_of_three_processors(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    def inject(load: SteadyLoad) -> float:
        fault_supervisor.kill("processor-1")
        recovery = load.wait_for_progress()
        time.sleep(2)  # the other two carry the load meanwhile
        return recovery

    run_fault("kill -9 one of three processors", healthy_mesh, fault_supervisor, inject)


def test_kill_query_and_restart(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    def inject(load: SteadyLoad) -> float:
        fault_supervisor.kill("query")
        started = time.monotonic()
        fault_supervisor.start(healthy_mesh.query())
        wait_healthy(healthy_mesh.query_target, 30)
        with grpc.insecure_channel(healthy_mesh.query_target) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.QueryServiceStub(channel).GetEvent(pb.GetEventRequest(event_id="none"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # answering again
        return time.monotonic() - started

    run_fault("kill -9 query, restart", healthy_mesh, fault_supervisor, inject)


def test_cassandra_stopped_then_started(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    def inject(load: SteadyLoad) -> float:
        infra("stop-cassandra")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # load continues; memory must stay bounded
            load.sample_rss(fault_supervisor, healthy_mesh)
            time.sleep(0.25)
        infra("start-cassandra")
        recovery = load.wait_for_progress(timeout=120)
        load.sample_rss(fault_supervisor, healthy_mesh)
        return recovery

    load = run_fault("Cassandra stopped ~10 s, started", healthy_mesh, fault_supervisor, inject)
    for name, rss in load.peak_rss.items():
        if name != "query":
            assert rss < SERVICE_RSS_BOUND_MB * 2**20, f"{name} grew to {rss / 2**20:.0f} MB"


def test_redis_restarted(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    def inject(load: SteadyLoad) -> float:
        infra("stop-redis")
        time.sleep(1)
        infra("start-redis")
        return load.wait_for_progress()

    run_fault("Redis restarted", healthy_mesh, fault_supervisor, inject)


def test_client_connections_cut_mid_stream(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    relay = Relay(healthy_mesh.ingest_port)

    def inject(load: SteadyLoad) -> float:
        recovery = 0.0
        for _ in range(3):
            relay.cut()
            recovery = max(recovery, load.wait_for_progress())
            time.sleep(0.5)
        return recovery

    try:
        load = run_fault(
            "client connections cut 3x", healthy_mesh, fault_supervisor, inject, target=f"127.0.0.1:{relay.port}"
        )
    finally:
        relay.close()
    assert load.client is not None and load.client.stats.reconnects >= 3


@pytest.mark.parametrize("name", ["ingest", "processor-0", "query"])
def test_sigterm_drains_gracefully(healthy_mesh: MeshLayout, fault_supervisor: Supervisor, name: str) -> None:
    procs = {p.name: p for p in healthy_mesh.services()}

    def inject(load: SteadyLoad) -> float:
        started = time.monotonic()
        assert fault_supervisor.signal(name, signal.SIGTERM)
        fault_supervisor.stop(name, grace=20)  # waits for the drain to finish
        drain_s = time.monotonic() - started
        assert drain_s < 15, f"{name} took {drain_s:.1f}s to drain"
        fault_supervisor.start(procs[name])
        wait_healthy(procs[name].target, 30)
        return load.wait_for_progress()

    run_fault(f"SIGTERM {name}, restart", healthy_mesh, fault_supervisor, inject)


def test_unavailable_store_answers_with_retry_info(healthy_mesh: MeshLayout, fault_supervisor: Supervisor) -> None:
    """With no processor to write, Submit is UNAVAILABLE with google.rpc.RetryInfo, Stream acks RETRY."""
    from auditmesh.serving import retry_after_ms

    for i in range(healthy_mesh.processors):
        fault_supervisor.kill(f"processor-{i}")
    try:
        ev = pb.Event(
            event_id=f"retry-{time.time_ns()}",
            user_id="u",
            event_type="auth.login.failed",
            severity=pb.P1_HIGH,
            outcome=pb.OUTCOME_FAILURE,
        )
        ev.occurred_at.FromNanoseconds(time.time_ns())
        batch = pb.EventBatch(batch_id="retry", events=[ev])
        with grpc.insecure_channel(healthy_mesh.ingest_target) as channel:
            stub = pb_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Submit(batch, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert retry_after_ms(info.value) > 0
            (ack,) = list(stub.Stream(iter([batch]), timeout=10))
            assert ack.status == pb.ACK_STATUS_RETRY and ack.retry_after_ms > 0 and ack.batch_id == "retry"
    finally:
        healthy_mesh.start(fault_supervisor)
