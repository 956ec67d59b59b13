"""The SDK's side of tracing: one ``sdk.batch`` span per batch, from build to ack, whose W3C
traceparent travels in the batch so ingest's spans join the caller's trace.

Needs only ``opentelemetry-api`` (optional: without it, or without a tracer provider installed
by the application when the client is created, the SDK makes no spans and costs nothing).
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the SDK runs without OpenTelemetry
    _trace = None  # type: ignore[assignment]

__all__ = ["BatchTracer"]


class BatchTracer:
    """Starts and ends the spans of batches; made only when a real tracer provider exists."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def create(cls, provider: Any = None) -> BatchTracer | None:
        """A tracer for ``provider`` (default: the application's global one), or None."""
        if _trace is None:
            return None
        provider = provider or _trace.get_tracer_provider()
        # The API's default provider (a proxy until the application installs one) makes no spans.
        if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
            return None
        return cls(provider.get_tracer("auditmesh.sdk"))

    def start(self, *, critical: bool, events: int, log_max_us: int) -> tuple[Any, str]:
        """A span for a batch being sent, and its traceparent ("" when it is not sampled)."""
        span = self._tracer.start_span(
            "sdk.batch",
            kind=_trace.SpanKind.PRODUCER,
            attributes={
                "auditmesh.lane": "critical" if critical else "normal",
                "auditmesh.events": events,
                "auditmesh.log_max_us": log_max_us,
            },
        )
        if not span.get_span_context().trace_flags.sampled:
            return span, ""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, _trace.set_span_in_context(span))
        return span, carrier.get("traceparent", "")

    @staticmethod
    def end(span: Any, *, attempts: int) -> None:
        """End a batch's span when it is settled (acknowledged, or refused)."""
        span.set_attribute("auditmesh.attempts", attempts)
        span.end()
