"""Entry point: ``python -m services.ingest``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh.metrics import StatsPublisher
from auditmesh.serving import run_service
from auditmesh.store import EventStore
from services.ingest.app import create
from services.ingest.calendar import CalendarView
from services.ingest.config import IngestConfig
from services.ingest.router import Budget, ProcessorLink, Router

log = logging.getLogger("auditmesh.ingest")


async def main(stop: asyncio.Event) -> None:
    cfg = IngestConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store, executor_threads=1)
    calendar = CalendarView(store.calendar)
    await calendar.refresh()
    links = [ProcessorLink(t, cfg.processor_timeout_s, cfg.limits.max_message_bytes * 2) for t in cfg.processors]
    router = Router(links, Budget(cfg.max_in_flight_events, cfg.max_in_flight_bytes))
    router.start()
    server, port, servicer, health_servicer = create(
        cfg, router, calendar.snapshot, reuse_port=os.environ.get("AUDITMESH_INGEST_REUSE_PORT") == "1"
    )
    refresher = asyncio.create_task(calendar.run(cfg.calendar_refresh_s))

    def stats() -> dict[str, object]:
        budget = router.budget
        return {
            **servicer.stats.as_dict(),
            "in_flight_events": budget.events,
            "in_flight_bytes": budget.bytes,
            "processors_connected": sum(link.connected.is_set() for link in links),
        }

    publisher = StatsPublisher(os.environ.get("AUDITMESH_STATS_FILE"), stats)
    publishing = asyncio.create_task(publisher.run())
    await server.start()
    log.info("ingest serving on %s:%d, processors %s", cfg.host, port, ",".join(cfg.processors))
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    servicer.draining.set()
    # New calls are refused; batches under way get their acks (or a RETRY) within the grace.
    await server.stop(grace=10)
    refresher.cancel()
    publishing.cancel()
    publisher.publish()
    await router.stop()
    store.close()
    s = servicer.stats
    log.info("ingest stopped: %d accepted, %d rejected, %d retried", s.accepted, s.rejected, s.retried)


if __name__ == "__main__":
    run_service(main)
