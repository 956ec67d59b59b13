"""Finished spans as flat records, read from the JSON-lines file the services write
(``AUDITMESH_SPANS_FILE``) or from Jaeger's query API, and printed as a waterfall."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JaegerQuery", "SpanRecord", "read_jsonl", "waterfall"]


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    start_us: int
    duration_us: int
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpanRecord:
        return cls(
            trace_id=str(raw["trace_id"]),
            span_id=str(raw["span_id"]),
            parent_id=str(raw.get("parent_id") or ""),
            name=str(raw["name"]),
            service=str(raw.get("service", "")),
            start_us=int(raw["start_us"]),
            duration_us=int(raw["duration_us"]),
            attributes=dict(raw.get("attributes") or {}),
        )


def read_jsonl(path: Path, start_us: int = 0, end_us: int | None = None) -> list[SpanRecord]:
    """Spans of a JSON-lines file that started within [start_us, end_us); bad lines are an error
    naming the line."""
    spans = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            span = SpanRecord.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a span record: {exc}") from None
        if span.start_us >= start_us and (end_us is None or span.start_us < end_us):
            spans.append(span)
    return spans


def _from_jaeger(trace: dict[str, Any]) -> Iterator[SpanRecord]:
    processes = {key: value.get("serviceName", "") for key, value in trace.get("processes", {}).items()}
    for span in trace.get("spans", []):
        parent = next((r["spanID"] for r in span.get("references", []) if r.get("refType") == "CHILD_OF"), "")
        yield SpanRecord(
            trace_id=span["traceID"].rjust(32, "0"),
            span_id=span["spanID"].rjust(16, "0"),
            parent_id=parent.rjust(16, "0") if parent else "",
            name=span["operationName"],
            service=processes.get(span.get("processID", ""), ""),
            start_us=int(span["startTime"]),
            duration_us=int(span["duration"]),
            attributes={tag["key"]: tag["value"] for tag in span.get("tags", [])},
        )


class JaegerQuery:
    """Jaeger's HTTP query API (port 16686): ``/api/traces`` and ``/api/services``."""

    def __init__(self, url: str = "http://127.0.0.1:16686", timeout_s: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self._url}{path}{query}", timeout=self._timeout_s) as response:
            return json.load(response)

    def services(self) -> list[str]:
        return list(self._get("/api/services").get("data") or [])

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every span of one trace (empty when Jaeger does not know it)."""
        try:
            data = self._get(f"/api/traces/{trace_id}").get("data") or []
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [span for trace in data for span in _from_jaeger(trace)]

    def spans(self, services: Iterable[str], start_us: int, end_us: int, limit: int = 1000) -> list[SpanRecord]:
        """Spans of the traces touching ``services`` in a time window, each span once."""
        seen: dict[tuple[str, str], SpanRecord] = {}
        for service in services:
            params = {"service": service, "start": str(start_us), "end": str(end_us), "limit": str(limit)}
            for trace in self._get("/api/traces", params).get("data") or []:
                for span in _from_jaeger(trace):
                    seen[(span.trace_id, span.span_id)] = span
        return list(seen.values())


_SHOWN = ("auditmesh.lane", "auditmesh.events", "auditmesh.requests", "auditmesh.partitions", "auditmesh.cache_hit")


def waterfall(spans: list[SpanRecord], budget_of: Callable[[SpanRecord], int | None], width: int = 40) -> str:
    """A trace as an indented waterfall: stage, service, start offset, duration, key attributes
    and a bar; spans over their stage's budget are marked."""
    if not spans:
        return "(no spans)"
    children: dict[str, list[SpanRecord]] = {}
    ids = {span.span_id for span in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_us):
        if span.parent_id and span.parent_id in ids:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    origin = min(span.start_us for span in spans)
    total = max(max(span.end_us for span in spans) - origin, 1)
    lines = [f"trace {spans[0].trace_id}: {len(spans)} spans over {total / 1000:.3f} ms"]

    def walk(span: SpanRecord, depth: int) -> None:
        offset = span.start_us - origin
        left = int(offset / total * width)
        bar = " " * left + "#" * max(1, int(span.duration_us / total * width))
        budget = budget_of(span)
        over = "  OVER BUDGET" if budget is not None and span.duration_us > budget else ""
        shown = " ".join(f"{k.split('.', 1)[-1]}={span.attributes[k]}" for k in _SHOWN if k in span.attributes)
        label = ("  " * depth + span.name).ljust(24)
        lines.append(
            f"{label} {span.service:<20} +{offset / 1000:9.3f} ms {span.duration_us / 1000:9.3f} ms"
            f" |{bar.ljust(width)}| {shown}{over}"
        )
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)
