"""The services' Prometheus endpoints, scraped over HTTP from a real mesh as a collector would."""

from __future__ import annotations

import time
import urllib.request
import uuid

import grpc

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout
from auditmesh.telemetry.scrape import Scrape, parse
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually
from tests.telemetry.conftest import scrape_mesh

RUNTIME = {
    "auditmesh_loop_lag_seconds_bucket",
    "auditmesh_loop_stalls_total",
    "auditmesh_gc_pause_seconds_bucket",
    "auditmesh_gc_collections_total",
    "auditmesh_telemetry_seconds_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
}
EXPECTED = {
    "ingest": RUNTIME
    | {
        "auditmesh_ingest_events_in_total",
        "auditmesh_ingest_events_out_total",
        "auditmesh_ingest_events_rejected_total",
        "auditmesh_ingest_client_dropped_events_total",
        "auditmesh_ingest_in_flight_events",
        "auditmesh_ingest_link_in_flight_events",
        "auditmesh_ingest_handling_seconds_bucket",
        "auditmesh_ingest_forward_seconds_bucket",
        "auditmesh_ingest_critical_handoff_seconds_bucket",
    },
    "processor": RUNTIME
    | {
        "auditmesh_processor_events_written_total",
        "auditmesh_processor_write_events_total",
        "auditmesh_processor_writes_in_flight",
        "auditmesh_processor_write_oldest_seconds",
        "auditmesh_processor_write_seconds_bucket",
        "auditmesh_processor_critical_seconds_bucket",
    },
    "query": RUNTIME
    | {
        "auditmesh_query_cache_hits_total",
        "auditmesh_query_cache_misses_total",
        "auditmesh_query_cache_lookup_seconds_bucket",
        "auditmesh_query_store_read_seconds_bucket",
    },
    "monitor": RUNTIME | {"auditmesh_monitor_alert_active", "auditmesh_monitor_threshold"},
}


def _event(event_id: str, wedding: str, severity: int, event_type: str = "guestlist.viewed") -> pb.Event:
    ev = pb.Event(
        event_id=event_id,
        wedding_id=wedding,
        user_id="u-metrics",
        event_type=event_type,
        severity=severity,  # type: ignore[arg-type]
        outcome=pb.OUTCOME_SUCCESS,
    )
    ev.occurred_at.FromNanoseconds(time.time_ns())
    return ev


def _value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.total(name, **labels) or 0.0


def _sum(scrapes: dict[str, Scrape], prefix: str, name: str) -> float:
    return sum(_value(s, name) for n, s in scrapes.items() if n.startswith(prefix))


def test_every_service_serves_prometheus_text_with_its_metrics(mesh: MeshLayout) -> None:
    """GET /metrics on each service's own metrics port answers Prometheus text holding that
    service's counters, gauges and latency histograms, the runtime's loop lag and GC pauses."""
    targets = mesh.metrics_targets()
    assert set(targets) == {"ingest", "query", "monitor", *(f"processor-{i}" for i in range(mesh.processors))}
    assert len(set(targets.values())) == len(targets), "every service has a port of its own"
    for name, target in targets.items():
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            scrape = parse(target, resp.read().decode())
        kind = name.split("-")[0]
        missing = EXPECTED[kind] - scrape.names()
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert scrape.series("auditmesh_service_info", service=kind)


def test_metric_values_move_when_events_flow(mesh: MeshLayout) -> None:
    """Events sent through the SDK and the Stream RPC (P0 and normal, one invalid, a reported SDK
    drop) and two identical searches move exactly the counters they should, per lane, and the
    write, handling and cache-lookup histograms."""
    before = scrape_mesh(mesh)
    run = uuid.uuid4().hex[:8]
    wedding = f"metrics-{run}"
    normal, critical = 120, 15
    with AuditClient(mesh.ingest_target, source_service="metrics-test") as client:
        for _ in range(normal):
            client.log("guestlist.viewed", user_id="u-m", wedding_id=wedding, severity=pb.P2_MEDIUM)
        for _ in range(critical):
            client.log("auth.login.failed", user_id="u-m", wedding_id=wedding, severity=pb.P0_CRITICAL)
        assert client.flush(30)
    batch = pb.EventBatch(
        batch_id=f"b-{run}",
        events=[_event(f"{run}-ok", wedding, pb.P2_MEDIUM), _event(f"{run}-bad", wedding, pb.P2_MEDIUM, event_type="")],
        client_dropped=7,
    )
    with grpc.insecure_channel(mesh.ingest_target) as channel:
        (ack,) = list(pb_grpc.IngestServiceStub(channel).Stream(iter([batch]), timeout=30))
    assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 1 and len(ack.rejected) == 1
    with grpc.insecure_channel(mesh.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for _ in range(2):
            list(stub.Search(pb.SearchRequest(wedding_id=wedding, page_size=50), timeout=10))

    def moved() -> None:
        after = scrape_mesh(mesh)
        ingest, ingest_before = after["ingest"], before["ingest"]

        def delta(name: str, **labels: str) -> float:
            return _value(ingest, name, **labels) - _value(ingest_before, name, **labels)

        assert delta("auditmesh_ingest_events_accepted_total") == normal + critical + 1
        assert delta("auditmesh_ingest_events_rejected_total") == 1
        assert delta("auditmesh_ingest_client_dropped_events_total") == 7
        assert delta("auditmesh_ingest_events_out_total", lane="critical") == critical
        assert delta("auditmesh_ingest_events_out_total", lane="normal") == normal + 1
        assert delta("auditmesh_ingest_events_in_total", lane="critical") == critical
        assert delta("auditmesh_ingest_handling_seconds_count", lane="normal") >= 1
        assert delta("auditmesh_ingest_forward_seconds_count", lane="critical") >= 1
        assert delta("auditmesh_ingest_critical_handoff_seconds_count") >= 1
        written = _sum(after, "processor", "auditmesh_processor_events_written_total")
        assert written - _sum(before, "processor", "auditmesh_processor_events_written_total") >= normal + critical + 1
        for lane in ("critical", "bulk"):
            count = "auditmesh_processor_write_seconds_count"
            now = sum(_value(s, count, lane=lane) for n, s in after.items() if n.startswith("processor"))
            then = sum(_value(s, count, lane=lane) for n, s in before.items() if n.startswith("processor"))
            assert now > then, lane
        query, query_before = after["query"], before["query"]
        assert _value(query, "auditmesh_query_cache_misses_total") > _value(
            query_before, "auditmesh_query_cache_misses_total"
        )
        assert _value(query, "auditmesh_query_cache_hits_total") > _value(
            query_before, "auditmesh_query_cache_hits_total"
        )
        assert _value(query, "auditmesh_query_cache_lookup_seconds_count") >= 2 + _value(
            query_before, "auditmesh_query_cache_lookup_seconds_count"
        )
        assert _value(query, "auditmesh_query_store_read_seconds_count") > _value(
            query_before, "auditmesh_query_store_read_seconds_count"
        )
        for name in after:
            assert _value(after[name], "auditmesh_loop_lag_seconds_count") > _value(
                before[name], "auditmesh_loop_lag_seconds_count"
            ), name

    assert_eventually(moved, timeout=15)
