"""The SDK's side of tracing: one ``sdk.batch`` span per batch, from build to ack, whose W3C
traceparent travels in the batch so ingest's spans join the caller's trace.

Uses only ``opentelemetry-api``, and only when the application traces: when it passes a tracer
provider to the client, or has installed one (and so imported OpenTelemetry) before creating
the client. Otherwise nothing of OpenTelemetry is imported and the SDK makes no spans.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BatchTracer"]


class BatchTracer:
    """Starts and ends the spans of batches; made only when a real tracer provider exists."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def create(cls, provider: Any = None) -> BatchTracer | None:
        """A tracer for ``provider`` (default: the application's global one), or None."""
        if provider is None and "opentelemetry.trace" not in sys.modules:
            return None  # the application has not imported OpenTelemetry: it cannot be tracing
        try:
            from opentelemetry import trace
        except ImportError:
            return None
        provider = provider or trace.get_tracer_provider()
        # The API's default provider (a proxy until the application installs one) makes no spans.
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
        return cls(provider.get_tracer("auditmesh.sdk"))

    def caller_trace_id(self) -> str:
        """The trace id of the calling thread's active span, or "" when it has none."""
        context = self._trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else ""

    def start(self, *, critical: bool, events: int, log_max_us: int) -> tuple[Any, str]:
        """A span for a batch being sent, and its traceparent ("" when it is not sampled)."""
        trace = self._trace
        span = self._tracer.start_span(
            "sdk.batch",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "auditmesh.lane": "critical" if critical else "normal",
                "auditmesh.events": events,
                "auditmesh.log_max_us": log_max_us,
            },
        )
        if not span.get_span_context().trace_flags.sampled:
            return span, ""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, trace.set_span_in_context(span))
        return span, carrier.get("traceparent", "")

    @staticmethod
    def end(span: Any, *, attempts: int) -> None:
        """End a batch's span when it is settled (acknowledged, or refused)."""
        span.set_attribute("auditmesh.attempts", attempts)
        span.end()
