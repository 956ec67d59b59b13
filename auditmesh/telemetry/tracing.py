"""OpenTelemetry tracing of the mesh: one span per batch and stage, never per event.

Trace context crosses the mesh in W3C ``traceparent`` form: in gRPC metadata for unary calls
(``Submit``, ``Search``, ``GetEvent``), and in the ``traceparent`` field of each ``EventBatch`` and
``ProcessRequest`` on the long-lived streams, where metadata is per stream, not per batch.

Configuration is OpenTelemetry's own (read once by :func:`setup`):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP/gRPC to ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. Jaeger or
  any collector), ``console``, or ``none`` (the default: no spans are made at all).
- ``OTEL_TRACES_SAMPLER_ARG``: the share of batches traced (default 0.01). Batches of the
  critical lane are always traced; a batch whose caller traced it follows the caller's decision
  (parent-based sampling).
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` as usual.
- ``AUDITMESH_SPANS_FILE``: also write every finished span as one JSON line to this file, which
  ``auditmesh budget`` reads.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from auditpb.v1 import audit_pb2 as pb

__all__ = [
    "CRITICAL",
    "LANE",
    "LaneSampler",
    "JsonLinesExporter",
    "context_of",
    "lane_name",
    "link_of",
    "setup",
    "traceparent",
    "tracer",
]

LANE = "auditmesh.lane"
"""Span attribute naming the lane of a batch: critical, wedding_day or normal."""
CRITICAL = "critical"
_LANE_NAMES: dict[int, str] = {pb.LANE_CRITICAL: CRITICAL, pb.LANE_WEDDING_DAY: "wedding_day", pb.LANE_NORMAL: "normal"}
DEFAULT_RATIO = 0.01
_PROPAGATOR = TraceContextTextMapPropagator()


class LaneSampler(Sampler):
    """Critical-lane batches always; the rest by trace id ratio."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if attributes and attributes.get(LANE) == CRITICAL:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LaneSampler(critical always, else {self._ratio.get_description()})"


class JsonLinesExporter(SpanExporter):
    """Writes each finished span as one JSON object per line (what ``auditmesh budget`` reads)."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in shutdown
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(span), separators=(",", ":")) for span in spans]
        with self._lock:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A span as the flat record ``auditmesh budget`` reads (also what it makes of Jaeger's)."""
    ctx = span.get_span_context()
    assert ctx is not None
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else "",
        "name": span.name,
        "service": str(span.resource.attributes.get("service.name", "")),
        "start_us": start // 1000,
        "duration_us": (end - start) // 1000,
        "attributes": {k: v for k, v in (span.attributes or {}).items() if isinstance(v, str | int | float | bool)},
    }


def setup(service_name: str, env: Mapping[str, str] = os.environ, *, install: bool = True) -> TracerProvider | None:
    """The tracer provider ``env`` describes, installed as the global one unless ``install`` is
    false; None when tracing is off."""
    exporter_names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    spans_file = env.get("AUDITMESH_SPANS_FILE", "")
    exporters: list[SpanExporter] = []
    for name in exporter_names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    if spans_file:
        exporters.append(JsonLinesExporter(spans_file))
    if not exporters:
        return None
    ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", DEFAULT_RATIO))
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={ratio}: a share between 0 and 1")
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(root=LaneSampler(ratio)))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if install:
        trace.set_tracer_provider(provider)
    return provider


def lane_name(lane: int) -> str:
    """The value of the :data:`LANE` attribute for a lane."""
    return _LANE_NAMES.get(lane, "normal")


def tracer(name: str) -> trace.Tracer:
    """The tracer of a component (a no-op one until :func:`setup` installed a provider)."""
    return trace.get_tracer(name)


def traceparent(span: trace.Span | None = None) -> str:
    """The W3C traceparent of ``span`` (default: the current one), or "" when it is not recorded."""
    span = span or trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_of(value: str | Mapping[str, str] | Sequence[tuple[str, str]] | None) -> Context | None:
    """The parent context a traceparent (a string, or gRPC metadata holding one) names."""
    if not value:
        return None
    if isinstance(value, str):
        carrier: dict[str, str] = {"traceparent": value}
    elif isinstance(value, Mapping):
        carrier = dict(value)
    else:
        carrier = {k: v for k, v in value if isinstance(v, str)}
    if "traceparent" not in carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def link_of(value: str) -> Link | None:
    """A span link to the span a traceparent names."""
    ctx = context_of(value)
    if ctx is None:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return Link(span_context) if span_context.is_valid else None
