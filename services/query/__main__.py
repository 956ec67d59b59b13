"""Entry point: ``python -m services.query``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh import cache
from auditmesh.cache import PageCache
from auditmesh.metrics import StatsPublisher
from auditmesh.serving import freeze_startup_objects, run_service
from auditmesh.store import EventStore
from services.query.app import create
from services.query.config import QueryConfig

log = logging.getLogger("auditmesh.query")


async def main(stop: asyncio.Event) -> None:
    cfg = QueryConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store)
    redis_client = cache.connect(cfg.redis_url) if cfg.redis_url else None
    server, port, servicer, health_servicer = create(cfg, store, PageCache(redis_client, cfg.cache_ttl_s))
    publisher = StatsPublisher(os.environ.get("AUDITMESH_STATS_FILE"), lambda: {"cache": servicer.cache.stats()})
    publishing = asyncio.create_task(publisher.run())
    freeze_startup_objects()
    await server.start()
    log.info("query serving on %s:%d", cfg.host, port)
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    publishing.cancel()
    publisher.publish()
    if redis_client is not None:
        await redis_client.aclose()
    store.close()


if __name__ == "__main__":
    run_service(main)
