"""Entry point: ``python -m services.ingest``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from grpc_health.v1 import health, health_pb2

from auditmesh import cache
from auditmesh.metrics import Reservoir, RuntimeStats, StatsPublisher
from auditmesh.scaling.membership import Membership, watch
from auditmesh.scaling.reports import IngestReports, Reporter
from auditmesh.security.serving import mesh_channel_credentials
from auditmesh.serving import freeze_startup_objects, run_service
from auditmesh.store import EventStore
from auditmesh.telemetry import collectors, prometheus
from auditmesh.telemetry.instruments import LaneWatch
from auditpb.v1 import audit_pb2 as pb
from services.ingest.app import create
from services.ingest.calendar import CalendarView
from services.ingest.config import IngestConfig
from services.ingest.forward import Forward
from services.ingest.router import Budget, ProcessorLink, Router
from services.ingest.servicer import SERVICE

log = logging.getLogger("auditmesh.ingest")


class _WatchedRouter(Router):
    """The router, with every request to a processor counted by lane for the metrics endpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lanes = LaneWatch()

    async def send(self, req: Forward) -> pb.ProcessResponse:
        return await self.lanes.forward(req, super().send)


async def main(stop: asyncio.Event) -> None:
    cfg = IngestConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store, executor_threads=1)
    calendar = CalendarView(store.calendar)
    await calendar.refresh()

    credentials = mesh_channel_credentials(cfg.security, "ingest")

    def link(target: str, handoff_us: Reservoir | None = None) -> ProcessorLink:
        return ProcessorLink(target, cfg.processor_timeout_s, cfg.limits.max_message_bytes * 2, handoff_us, credentials)

    critical_handoff_us = Reservoir(5_000)
    runtime = RuntimeStats()

    def reset_latencies() -> None:
        critical_handoff_us.reset()
        runtime.reset()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, reset_latencies)
    static = () if cfg.membership_prefix else cfg.processors
    router = _WatchedRouter(
        [link(t) for t in static],
        Budget(cfg.max_in_flight_events, cfg.max_in_flight_bytes),
        critical_links=[link(t, critical_handoff_us) for t in static],
        critical_budget=Budget(cfg.critical_in_flight_events, cfg.critical_in_flight_bytes),
        wedding_day_links=[link(t) for t in static],
        wedding_day_budget=Budget(cfg.wedding_day_in_flight_events, cfg.wedding_day_in_flight_bytes),
        link_factory=lambda target, critical: link(target, critical_handoff_us if critical else None),
    )
    router.start()
    scaling = _scaling(cfg, router)
    server, port, servicer, health_servicer = create(
        cfg, router, calendar.snapshot, reuse_port=os.environ.get("AUDITMESH_INGEST_REUSE_PORT") == "1"
    )
    refresher = asyncio.create_task(calendar.run(cfg.calendar_refresh_s))
    readiness = asyncio.create_task(_track_readiness(router, health_servicer))
    runtime.start()

    def stats() -> dict[str, object]:
        budgets = (router.budget, router.critical_budget, router.wedding_day_budget)
        return {
            **servicer.stats.as_dict(),
            "in_flight_events": sum(b.events for b in budgets),
            "in_flight_bytes": sum(b.bytes for b in budgets),
            "read_bytes": servicer.read_budget.used,
            "processors_connected": sum(link.connected.is_set() for link in router.links),
            "critical_handoff_us": critical_handoff_us.summary(),
            **runtime.summary(),
        }

    publisher = StatsPublisher(os.environ.get("AUDITMESH_STATS_FILE"), stats)
    publishing = asyncio.create_task(publisher.run())
    metrics = prometheus.serve(
        "ingest",
        [
            lambda: collectors.ingest_metrics(
                servicer.stats, router, servicer.read_budget, router.lanes, critical_handoff_us
            ),
            lambda: prometheus.runtime_metrics(runtime),
        ],
        host=cfg.host,
        port=cfg.metrics_port,
    )
    freeze_startup_objects()
    await server.start()
    where = f"membership {cfg.membership_prefix}" if cfg.membership_prefix else ",".join(cfg.processors)
    log.info("ingest serving on %s:%d, processors %s", cfg.host, port, where)
    if cfg.scaler_target:
        reports = IngestReports(f"{cfg.host}:{port}", router.lanes, lambda: servicer.stats.accepted)
        scaling.append(
            asyncio.create_task(
                Reporter(
                    cfg.scaler_target, reports.build, credentials=mesh_channel_credentials(cfg.security, "ingest")
                ).run()
            )
        )
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    servicer.draining.set()
    # New calls are refused; batches under way get their acks (or a RETRY) within the grace.
    await server.stop(grace=10)
    refresher.cancel()
    readiness.cancel()
    for task in scaling:
        task.cancel()
    runtime.stop()
    publishing.cancel()
    publisher.publish()
    metrics.stop()
    await router.stop()
    store.close()
    s = servicer.stats
    log.info("ingest stopped: %d accepted, %d rejected, %d retried", s.accepted, s.rejected, s.retried)


def _scaling(cfg: IngestConfig, router: Router) -> list[asyncio.Task[None]]:
    """With membership, a task that links the router to every registered processor."""
    if not cfg.membership_prefix:
        return []
    membership = Membership(cache.connect(cfg.redis_url, 1.0), cfg.membership_prefix)
    return [asyncio.create_task(watch(membership, router.set_targets, cfg.membership_interval_s))]


async def _track_readiness(router: Router, health_servicer: health.HealthServicer) -> None:
    """SERVING only while at least one processor is connected: nothing can be acked without one."""
    serving: bool | None = None
    while True:
        ready = router.healthy()
        if ready != serving:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE):
                health_servicer.set(name, status)
            serving = ready
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    run_service(main)
