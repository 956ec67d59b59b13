"""Prometheus text exposition of a service's own stats, on an HTTP port of its own.

Collectors read the stats objects a service already keeps (counters, :class:`Reservoir`
histograms, :class:`RuntimeStats`) when the endpoint is scraped: nothing on the request path
counts twice, and a service nobody scrapes pays nothing. The endpoint answers ``GET /metrics``
from a thread of its own; the CPU time that building its answers takes is itself exported
(``auditmesh_telemetry_seconds_total``): the overhead the performance monitor checks.

Families are written straight to the text format (0.0.4) here rather than built as
prometheus-client ``Metric`` objects and rendered by its ``generate_latest`` (with its
``ProcessCollector``): that took 1.1-1.7 ms of CPU per scrape for a service's ~250 samples, over
the 0.1% overhead budget at one scrape a second; written directly, with bucket bounds formatted
once, a scrape takes about a fifth of that. prometheus-client reads the text back
(:mod:`auditmesh.telemetry.scrape`), as Prometheus would.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from auditmesh.metrics import Reservoir, RuntimeStats

__all__ = ["CollectFn", "MetricsServer", "counter", "gauge", "histogram", "runtime_metrics", "serve"]

log = logging.getLogger("auditmesh.telemetry")

CollectFn = Callable[[], Iterable[str]]
"""What a service contributes to its endpoint: metric families in the text format, built from
its stats when scraped."""

Values = Mapping[tuple[str, ...], float] | float


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))


def _header(name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _simple(kind: str, name: str, doc: str, values: Values, labels: Sequence[str]) -> str:
    lines = [_header(name, doc, kind)]
    if isinstance(values, Mapping):
        for key, value in values.items():
            lines.append(f"{name}{{{_labels(labels, key)}}} {_number(value)}\n")
    else:
        lines.append(f"{name} {_number(values)}\n")
    return "".join(lines)


def counter(name: str, doc: str, values: Values, labels: Sequence[str] = ()) -> str:
    """A counter family (``name`` ends in ``_total``): one value, or one per tuple of label values."""
    return _simple("counter", name, doc, values, labels)


def gauge(name: str, doc: str, values: Values, labels: Sequence[str] = ()) -> str:
    """A gauge family: one value, or one per tuple of label values."""
    return _simple("gauge", name, doc, values, labels)


@functools.cache
def _bounds(bounds_us: tuple[int, ...]) -> tuple[str, ...]:
    """``le`` values in seconds of reservoir bounds in microseconds, and +Inf."""
    return (*(repr(b / 1e6) for b in bounds_us), "+Inf")


def histogram(
    name: str, doc: str, reservoirs: Mapping[tuple[str, ...], Reservoir] | Reservoir, labels: Sequence[str] = ()
) -> str:
    """A histogram family in seconds from reservoirs (values in microseconds): one, or one per
    tuple of label values."""
    lines = [_header(name, doc, "histogram")]
    items = reservoirs.items() if isinstance(reservoirs, Mapping) else [((), reservoirs)]
    for key, reservoir in items:
        counts, total_us = reservoir.histogram()
        series = _labels(labels, key)
        bucket = f'{name}_bucket{{{series},le="' if series else f'{name}_bucket{{le="'
        lines.extend(f'{bucket}{le}"}} {n}\n' for le, n in zip(_bounds(reservoir.bounds), counts, strict=True))
        braces = f"{{{series}}}" if series else ""
        lines.append(f"{name}_count{braces} {counts[-1]}\n{name}_sum{braces} {_number(total_us / 1e6)}\n")
    return "".join(lines)


def runtime_metrics(runtime: RuntimeStats) -> Iterator[str]:
    """The event loop's lag and stalls and the garbage collector's pauses."""
    lag = runtime.lag
    yield histogram("auditmesh_loop_lag_seconds", "How late the event loop ran a 20 ms timer.", lag.lag_us)
    yield counter("auditmesh_loop_stalls_total", "Timer overruns of 10 ms or more.", lag.stalls)
    yield counter(
        "auditmesh_loop_stall_seconds_total",
        "Time lost in stalls, by where it went: the loop's own thread on the CPU, other threads "
        "of the process on the CPU (an upper bound), or the process waiting for a core or the GIL.",
        {
            ("own_thread",): lag.stall_s_own,
            ("other_threads",): lag.stall_s_other_threads,
            ("waiting",): lag.stall_s_waiting,
        },
        ["cause"],
    )
    gc_time = runtime.gc_time
    yield histogram(
        "auditmesh_gc_pause_seconds", "Pauses of the cyclic garbage collector (every thread stops).", gc_time.pause_us
    )
    generations = [(str(g),) for g in range(3)]
    yield counter(
        "auditmesh_gc_collections_total",
        "Collections of the cyclic garbage collector, by generation.",
        dict(zip(generations, gc_time.collections, strict=True)),
        ["generation"],
    )
    yield counter(
        "auditmesh_gc_seconds_total",
        "Time spent in the cyclic garbage collector, by generation.",
        dict(zip(generations, gc_time.seconds, strict=True)),
        ["generation"],
    )


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_metrics() -> Iterator[str]:
    """The process's CPU time, resident memory and threads, under the names client libraries use."""
    times = os.times()
    yield counter("process_cpu_seconds_total", "User and system CPU time of the process.", times.user + times.system)
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return
    yield gauge("process_resident_memory_bytes", "Resident memory of the process.", resident)
    yield gauge("process_threads", "Python threads of the process.", threading.active_count())


class MetricsServer:
    """``GET /metrics`` on ``host:port`` in a thread of its own; ``start`` returns the bound port
    (``port`` 0 picks a free one); ``stop`` is safe before ``start`` and twice."""

    def __init__(self, service: str, collectors: Sequence[CollectFn], *, host: str = "127.0.0.1", port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.cpu_s = 0.0
        self.scrapes = 0
        self._collectors = [self._own_metrics, process_metrics, *collectors]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _own_metrics(self) -> Iterator[str]:
        yield gauge(
            "auditmesh_service_info", "The service this endpoint belongs to.", {(self.service,): 1}, ["service"]
        )
        with self._lock:
            cpu_s, scrapes = self.cpu_s, self.scrapes
        yield counter("auditmesh_telemetry_seconds_total", "CPU time spent answering scrapes of this endpoint.", cpu_s)
        yield counter("auditmesh_telemetry_scrapes_total", "Scrapes of this endpoint answered.", scrapes)

    def render(self) -> bytes:
        """The exposition text, counting the CPU time it took."""
        started = time.thread_time()
        parts = [family for collect in self._collectors for family in collect()]
        body = "".join(parts).encode()
        with self._lock:
            self.cpu_s += time.thread_time() - started
            self.scrapes += 1
        return body

    def start(self) -> int:
        if self._server is not None:
            return self.port
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = owner.render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
                pass

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("%s metrics on http://%s:%d/metrics", self.service, self.host, self.port)
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def serve(service: str, collectors: Sequence[CollectFn], *, host: str, port: int) -> MetricsServer:
    """A service's metrics endpoint, started unless ``port`` is 0 (metrics off)."""
    server = MetricsServer(service, collectors, host=host, port=port)
    if port:
        server.start()
    return server
