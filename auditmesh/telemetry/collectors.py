"""The metric families of each service, read from the stats objects it keeps.

Every name here is what the services export (``deploy/grafana`` and ``auditmesh top`` use
them; a test scrapes a real mesh and checks the dashboard against it). Counters count since
the process started; latencies are histograms in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Protocol

from auditmesh.cache import PageCache, VersionBumper
from auditmesh.metrics import Reservoir
from auditmesh.telemetry.instruments import LANES, LaneWatch, ReadWatch, TimedPageCache, WriteWatch
from auditmesh.telemetry.prometheus import counter, gauge, histogram

__all__ = ["ingest_metrics", "processor_metrics", "query_metrics"]


class IngestCounters(Protocol):
    batches: int
    accepted: int
    rejected: int
    retried: int
    refused: int
    client_dropped: int


class InFlightBudget(Protocol):
    events: int
    bytes: int
    max_events: int


class Link(Protocol):
    target: str
    in_flight_events: int
    connected: asyncio.Event


class Routes(Protocol):
    @property
    def budget(self) -> InFlightBudget: ...

    @property
    def critical_budget(self) -> InFlightBudget: ...

    @property
    def links(self) -> Sequence[Link]: ...

    @property
    def critical_links(self) -> Sequence[Link]: ...

    @property
    def wedding_day_budget(self) -> InFlightBudget: ...

    @property
    def wedding_day_links(self) -> Sequence[Link]: ...


class ReadBytes(Protocol):
    used: int


def ingest_metrics(
    stats: IngestCounters, routes: Routes, read_budget: ReadBytes, lanes: LaneWatch, critical_handoff_us: Reservoir
) -> Iterator[str]:
    yield counter("auditmesh_ingest_batches_total", "Batches received (Stream and Submit).", stats.batches)
    yield counter("auditmesh_ingest_events_accepted_total", "Events acknowledged to callers as stored.", stats.accepted)
    yield counter(
        "auditmesh_ingest_events_rejected_total", "Events rejected as invalid (per-event reasons).", stats.rejected
    )
    yield counter(
        "auditmesh_ingest_events_retried_total", "Valid events whose batch got RETRY (store or bound).", stats.retried
    )
    yield counter("auditmesh_ingest_batches_refused_total", "Batches refused whole (over the limits).", stats.refused)
    yield counter(
        "auditmesh_ingest_client_dropped_events_total",
        "Events the SDKs dropped because their buffer was full, as they report it (never P0).",
        stats.client_dropped,
    )
    by_lane = {(name,): lanes.lanes[lane] for lane, name in LANES.items()}
    yield counter(
        "auditmesh_ingest_events_in_total",
        "Events routed to a processor, by lane.",
        {k: c.events_in for k, c in by_lane.items()},
        ["lane"],
    )
    yield counter(
        "auditmesh_ingest_events_out_total",
        "Events a processor acknowledged as written, by lane.",
        {k: c.events_out for k, c in by_lane.items()},
        ["lane"],
    )
    yield counter(
        "auditmesh_ingest_events_failed_total",
        "Events whose processor request failed (the caller resends them), by lane.",
        {k: c.events_failed for k, c in by_lane.items()},
        ["lane"],
    )
    yield gauge(
        "auditmesh_ingest_in_flight_events",
        "Events sent to processors and not yet answered, by lane.",
        {k: c.in_flight_events for k, c in by_lane.items()},
        ["lane"],
    )
    yield gauge(
        "auditmesh_ingest_oldest_in_flight_seconds",
        "How long the oldest unanswered processor request has waited, by lane (0 when none).",
        {k: c.in_flight.oldest_s() for k, c in by_lane.items()},
        ["lane"],
    )
    yield histogram(
        "auditmesh_ingest_handling_seconds",
        "From ingest stamping a batch's valid events to routing them to a processor (priority, "
        "lane, in-flight admission), by lane.",
        {k: c.handling_us for k, c in by_lane.items()},
        ["lane"],
    )
    yield histogram(
        "auditmesh_ingest_forward_seconds",
        "Round trip of a processor request that succeeded (queue, transit, write, ack), by lane.",
        {k: c.forward_us for k, c in by_lane.items()},
        ["lane"],
    )
    yield histogram(
        "auditmesh_ingest_critical_handoff_seconds",
        "Critical lane: from ingest receiving an event to handing its request to gRPC.",
        critical_handoff_us,
    )
    budgets = {
        ("bulk",): routes.budget,
        ("critical",): routes.critical_budget,
        ("wedding_day",): routes.wedding_day_budget,
    }
    yield gauge(
        "auditmesh_ingest_budget_events",
        "Events held by an in-flight budget (bulk is the normal lane's; each other lane has its own).",
        {k: b.events for k, b in budgets.items()},
        ["budget"],
    )
    yield gauge(
        "auditmesh_ingest_budget_bytes",
        "Bytes held by an in-flight budget.",
        {k: b.bytes for k, b in budgets.items()},
        ["budget"],
    )
    yield gauge(
        "auditmesh_ingest_budget_limit_events",
        "The bound of an in-flight budget.",
        {k: b.max_events for k, b in budgets.items()},
        ["budget"],
    )
    yield gauge(
        "auditmesh_ingest_read_bytes", "Bytes of batches read and not yet answered, all calls.", read_budget.used
    )
    links = [
        *(("bulk", link) for link in routes.links),
        *(("critical", link) for link in routes.critical_links),
        *(("wedding_day", link) for link in routes.wedding_day_links),
    ]
    yield gauge(
        "auditmesh_ingest_processors_connected",
        "Processors with a live bulk stream.",
        sum(link.connected.is_set() for link in routes.links),
    )
    yield gauge(
        "auditmesh_ingest_link_in_flight_events",
        "Events queued to or awaiting the answer of one processor stream (the queue in front of it).",
        {(link.target, kind): link.in_flight_events for kind, link in links},
        ["processor", "link"],
    )


class ProcessorLatencies(Protocol):
    written: int
    failed: int
    write_us: Reservoir
    critical_us: Reservoir
    critical_transit_us: Reservoir
    critical_write_us: Reservoir


def processor_metrics(servicer: ProcessorLatencies, writes: WriteWatch, versions: VersionBumper) -> Iterator[str]:
    yield counter("auditmesh_processor_events_written_total", "Events written and acknowledged.", servicer.written)
    yield counter(
        "auditmesh_processor_events_failed_total", "Events whose write failed (ingest resends).", servicer.failed
    )
    lanes = {(lane,): c for lane, c in writes.lanes.items()}
    yield counter(
        "auditmesh_processor_write_events_total",
        "Events handed to store writes, by lane (critical, bulk).",
        {k: c.events for k, c in lanes.items()},
        ["lane"],
    )
    yield counter(
        "auditmesh_processor_writes_total",
        "Store writes (one per group commit), by lane.",
        {k: c.writes for k, c in lanes.items()},
        ["lane"],
    )
    yield counter(
        "auditmesh_processor_write_errors_total",
        "Store writes that failed, by lane.",
        {k: c.errors for k, c in lanes.items()},
        ["lane"],
    )
    yield gauge(
        "auditmesh_processor_writes_in_flight",
        "Store writes under way, by lane.",
        {k: len(c.in_flight) for k, c in lanes.items()},
        ["lane"],
    )
    yield gauge(
        "auditmesh_processor_write_oldest_seconds",
        "How long the oldest store write under way has taken so far, by lane (0 when none).",
        {k: c.in_flight.oldest_s() for k, c in lanes.items()},
        ["lane"],
    )
    yield histogram(
        "auditmesh_processor_write_seconds",
        "Store write of one group commit, by lane.",
        {("bulk",): servicer.write_us, ("critical",): servicer.critical_write_us},
        ["lane"],
    )
    yield histogram(
        "auditmesh_processor_critical_seconds",
        "Critical lane: from ingest receiving an event to its write being confirmed here.",
        servicer.critical_us,
    )
    yield histogram(
        "auditmesh_processor_critical_transit_seconds",
        "Critical lane: from ingest receiving an event to its request reaching this processor.",
        servicer.critical_transit_us,
    )
    yield counter("auditmesh_processor_cache_version_bumps_total", "Cache-version bumps after writes.", versions.bumped)
    yield counter(
        "auditmesh_processor_cache_version_bump_failures_total",
        "Cache-version bumps that failed (the cache is retired once Redis answers).",
        versions.failures,
    )


def query_metrics(cache: PageCache, reads: ReadWatch) -> Iterator[str]:
    yield counter("auditmesh_query_cache_hits_total", "Search pages served from the Redis cache.", cache.hits)
    yield counter("auditmesh_query_cache_misses_total", "Search pages read from Cassandra.", cache.misses)
    yield counter("auditmesh_query_cache_errors_total", "Redis failures (each one a miss).", cache.errors)
    if isinstance(cache, TimedPageCache):
        yield histogram("auditmesh_query_cache_lookup_seconds", "One page lookup in the Redis cache.", cache.lookup_us)
    yield histogram(
        "auditmesh_query_store_read_seconds",
        "One Cassandra read, by operation (buckets, rows, get).",
        {(op,): r for op, r in reads.read_us.items()},
        ["op"],
    )
    yield counter(
        "auditmesh_query_store_errors_total",
        "Cassandra reads that failed, by operation.",
        {(op,): n for op, n in reads.errors.items()},
        ["op"],
    )
    yield gauge("auditmesh_query_store_reads_in_flight", "Cassandra reads under way.", len(reads.in_flight))
