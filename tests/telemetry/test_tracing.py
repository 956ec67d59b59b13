"""Traces through the real services into a real Jaeger: one connected trace per P0 batch from
the SDK to the Cassandra write and the ack, and the query path's Redis and Cassandra spans."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from auditmesh.cli import main
from auditmesh.client import AuditClient
from auditmesh.mesh import JAEGER_SCRIPT, MeshLayout
from auditmesh.telemetry import tracing
from auditmesh.telemetry.spans import JaegerQuery, SpanRecord
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually, own_mesh
from tests.detection.conftest import PACK
from tests.detection.mesh_helpers import Subscriber

OTLP = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
    "OTEL_EXPORTER_OTLP_INSECURE": "true",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_TRACES_SAMPLER_ARG": "0",  # only the critical lane, which is always traced
}
WRITE_PATH = {"sdk.batch", "ingest.batch", "ingest.handle", "ingest.forward", "processor.request", "store.write"}


@pytest.fixture(scope="module")
def jaeger() -> JaegerQuery:
    subprocess.run([str(JAEGER_SCRIPT), "up"], check=True, timeout=900)
    return JaegerQuery()


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans") / "spans.jsonl"


@pytest.fixture(scope="module")
def traced_mesh(
    jaeger: JaegerQuery, spans_file: Path, store_config: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeshLayout]:
    env = {**OTLP, "AUDITMESH_SPANS_FILE": str(spans_file)}
    rules = {"processor": {"AUDITMESH_DETECTION_RULES": str(PACK)}}
    with own_mesh(tmp_path_factory, "traced", 22351, env=env, service_env=rules) as (layout, _):
        yield layout


@pytest.fixture(scope="module")
def provider() -> Iterator[TracerProvider]:
    """The calling application's tracer provider, exporting to the same Jaeger."""
    made = tracing.setup("auditmesh-test-caller", OTLP, install=False)
    assert made is not None
    yield made
    made.shutdown()


@pytest.fixture(scope="module")
def tracing_everything() -> Iterator[TracerProvider]:
    """A caller that traces all it does (ratio 1), so its spans' children are kept too."""
    made = tracing.setup("auditmesh-test-caller", {**OTLP, "OTEL_TRACES_SAMPLER_ARG": "1"}, install=False)
    assert made is not None
    yield made
    made.shutdown()


def _trace_of(jaeger: JaegerQuery, trace_id: str, names: set[str]) -> list[SpanRecord]:
    found: list[SpanRecord] = []

    def complete() -> bool:
        found[:] = jaeger.trace(trace_id)
        return names <= {span.name for span in found}

    assert_eventually(complete, timeout=30, interval=0.5)
    return found


def test_a_p0_event_has_one_connected_trace_from_the_sdk_to_the_write(
    traced_mesh: MeshLayout,
    jaeger: JaegerQuery,
    provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A P0 event's batch is traced (always), its events carry the trace id, and Jaeger holds one
    connected trace: the SDK's batch span is the only root, and ingest's handling, the forward to
    the processor, the processor's request, the Cassandra write and the cache bump hang under it.
    A normal event at ratio 0 is not traced, but carries the trace id of the application's span
    it was logged in. `auditmesh trace EVENT_ID` prints that waterfall."""
    run = uuid.uuid4().hex[:8]
    with AuditClient(traced_mesh.ingest_target, source_service="tracing", tracer_provider=provider) as client:
        p0 = client.log("auth.privilege.escalated", user_id=f"u-{run}", wedding_id=f"w-{run}", severity=pb.P0_CRITICAL)
        with provider.get_tracer("app").start_as_current_span("app.request") as request:
            normal = client.log("guestlist.viewed", user_id=f"u-{run}", wedding_id=f"w-{run}")
        assert client.flush(timeout=30)
    provider.force_flush()
    with grpc.insecure_channel(traced_mesh.query_target) as channel:
        get = pb_grpc.QueryServiceStub(channel).GetEvent
        trace_id = get(pb.GetEventRequest(event_id=p0), timeout=10).trace_id
        logged_in_request = get(pb.GetEventRequest(event_id=normal), timeout=10)
        assert logged_in_request.trace_id == ""
        # The application's request that did the audited thing is named on the event.
        assert logged_in_request.caller_trace_id == f"{request.get_span_context().trace_id:032x}"
    assert len(trace_id) == 32
    spans = _trace_of(jaeger, trace_id, WRITE_PATH | {"cache.bump"})
    ids = {span.span_id for span in spans}
    roots = [span for span in spans if span.parent_id not in ids]
    assert [root.name for root in roots] == ["sdk.batch"]
    by_name = {span.name: span for span in spans}
    assert by_name["ingest.batch"].attributes["auditmesh.lane"] == "critical"
    assert by_name["store.write"].attributes["auditmesh.events"] >= 1
    assert {span.service for span in spans} >= {"auditmesh-test-caller", "auditmesh-ingest", "auditmesh-processor"}

    monkeypatch.setenv("AUDITMESH_QUERY_PORT", str(traced_mesh.query_port))
    assert main(["trace", p0]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"trace {trace_id}")
    for name in WRITE_PATH:
        assert name in printed


def test_a_search_has_its_redis_and_cassandra_spans(
    traced_mesh: MeshLayout, jaeger: JaegerQuery, tracing_everything: TracerProvider
) -> None:
    """A Search called within a traced span (traceparent in gRPC metadata) adds the query
    service's span, the Redis page lookup and the Cassandra read to the caller's trace."""
    provider = tracing_everything
    caller = provider.get_tracer("test").start_span("caller.search")
    metadata = [("traceparent", tracing.traceparent(caller))]
    with grpc.insecure_channel(traced_mesh.query_target) as channel:
        search = pb_grpc.QueryServiceStub(channel).Search
        list(search(pb.SearchRequest(wedding_id=f"w-{uuid.uuid4().hex[:8]}"), metadata=metadata, timeout=10))
    caller.end()
    provider.force_flush()
    trace_id = f"{caller.get_span_context().trace_id:032x}"
    spans = _trace_of(jaeger, trace_id, {"caller.search", "query.search", "cache.lookup", "store.read"})
    parents = {span.span_id: span.name for span in spans}
    assert {parents.get(s.parent_id) for s in spans if s.name in {"cache.lookup", "store.read"}} == {"query.search"}
    assert parents[next(s.parent_id for s in spans if s.name == "query.search")] == "caller.search"


def test_an_alert_delivery_joins_its_trigger_s_trace(traced_mesh: MeshLayout, jaeger: JaegerQuery) -> None:
    """A P0 event (its request always traced) raises an alert; its handoff to a SubscribeAlerts
    caller adds the query service's alert.deliver span to the event's trace, under the processor's
    request, lasting from ingest's receipt of the event to the handoff."""
    run = uuid.uuid4().hex[:8]
    subscriber = Subscriber(traced_mesh.query_target)
    try:
        with AuditClient(traced_mesh.ingest_target, source_service="tracing") as client:
            p0 = client.log("auth.account.locked", user_id=f"u-{run}", severity=pb.P0_CRITICAL)
            assert client.flush(timeout=30)
        assert_eventually(lambda: any(a.user_id == f"u-{run}" for a in subscriber.alerts), timeout=20)
        alert = next(a for a in subscriber.alerts if a.user_id == f"u-{run}")
    finally:
        subscriber.close()
    assert alert.traceparent
    with grpc.insecure_channel(traced_mesh.query_target) as channel:
        trace_id = pb_grpc.QueryServiceStub(channel).GetEvent(pb.GetEventRequest(event_id=p0), timeout=10).trace_id
    assert len(trace_id) == 32 and trace_id in alert.traceparent
    spans = _trace_of(jaeger, trace_id, {"processor.request", "alert.deliver"})
    parents = {span.span_id: span.name for span in spans}
    deliver = next(s for s in spans if s.name == "alert.deliver")
    assert parents[deliver.parent_id] == "processor.request"
    assert deliver.service == "auditmesh-query" and deliver.attributes["auditmesh.rule"] == "p0_event"
    assert deliver.duration_us > 0 and deliver.start_us == alert.trigger_received_at_us


def test_budget_reads_the_services_spans(traced_mesh: MeshLayout, spans_file: Path) -> None:
    """The services' span file holds the write path's spans, and `auditmesh budget` checks them
    (pass or fail on this host, but never "nothing to check")."""
    assert_eventually(lambda: spans_file.exists() and "store.write" in spans_file.read_text(), timeout=15)
    assert main(["budget", "--spans", str(spans_file), "--since", "0"]) in (0, 1)
