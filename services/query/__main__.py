"""Entry point: ``python -m services.query``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh import cache
from auditmesh.metrics import RuntimeStats, StatsPublisher
from auditmesh.serving import freeze_startup_objects, run_service
from auditmesh.store import EventStore
from auditmesh.telemetry import collectors, prometheus
from auditmesh.telemetry.instruments import ReadWatch, TimedPageCache
from services.query.app import create
from services.query.config import QueryConfig

log = logging.getLogger("auditmesh.query")


async def main(stop: asyncio.Event) -> None:
    cfg = QueryConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store)
    redis_client = cache.connect(cfg.redis_url) if cfg.redis_url else None
    reads, page_cache = ReadWatch(store), TimedPageCache(redis_client, cfg.cache_ttl_s)
    server, port, servicer, health_servicer = create(cfg, reads, page_cache)
    publisher = StatsPublisher(os.environ.get("AUDITMESH_STATS_FILE"), lambda: {"cache": servicer.cache.stats()})
    publishing = asyncio.create_task(publisher.run())
    runtime = RuntimeStats()
    runtime.start()
    metrics = prometheus.serve(
        "query",
        [lambda: collectors.query_metrics(page_cache, reads), lambda: prometheus.runtime_metrics(runtime)],
        host=cfg.host,
        port=cfg.metrics_port,
    )
    freeze_startup_objects()
    await server.start()
    log.info("query serving on %s:%d", cfg.host, port)
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    publishing.cancel()
    publisher.publish()
    runtime.stop()
    metrics.stop()
    if redis_client is not None:
        await redis_client.aclose()
    store.close()


if __name__ == "__main__":
    run_service(main)
