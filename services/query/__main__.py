"""Entry point: ``python -m services.query``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh import cache
from auditmesh.detection.alerts import AlertStore
from auditmesh.detection.service import build_feed, feed_metrics
from auditmesh.metrics import RuntimeStats, StatsPublisher
from auditmesh.serving import freeze_startup_objects, run_service
from auditmesh.store import EventStore
from auditmesh.telemetry import collectors, prometheus
from auditmesh.telemetry.instruments import ReadWatch, TimedPageCache
from auditpb.v1 import alerts_pb2_grpc
from services.query.alerts import AlertServicer
from services.query.app import create
from services.query.config import QueryConfig

log = logging.getLogger("auditmesh.query")


async def main(stop: asyncio.Event) -> None:
    cfg = QueryConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store)
    redis_client = cache.connect(cfg.redis_url) if cfg.redis_url else None
    reads, page_cache = ReadWatch(store), TimedPageCache(redis_client, cfg.cache_ttl_s)
    server, port, servicer, health_servicer = create(cfg, reads, page_cache)
    feed = build_feed(cfg.redis_url, cfg.store.keyspace) if cfg.redis_url else None
    if feed is not None:
        alerts = AlertServicer(AlertStore(store.session, cfg.store.keyspace, cfg.store.max_batch_bytes), feed)
        alerts_pb2_grpc.add_AlertServiceServicer_to_server(alerts, server)
        feed.start()
    publisher = StatsPublisher(
        os.environ.get("AUDITMESH_STATS_FILE"),
        lambda: {"cache": servicer.cache.stats()} | ({"alert_feed": feed.stats()} if feed is not None else {}),
    )
    publishing = asyncio.create_task(publisher.run())
    runtime = RuntimeStats()
    runtime.start()
    metrics = prometheus.serve(
        "query",
        [
            lambda: collectors.query_metrics(page_cache, reads),
            lambda: prometheus.runtime_metrics(runtime),
            *([lambda: feed_metrics(feed)] if feed is not None else []),
        ],
        host=cfg.host,
        port=cfg.metrics_port,
    )
    freeze_startup_objects()
    await server.start()
    log.info("query serving on %s:%d", cfg.host, port)
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    if feed is not None:
        await feed.shutdown()
    publishing.cancel()
    publisher.publish()
    runtime.stop()
    metrics.stop()
    if redis_client is not None:
        await redis_client.aclose()
    store.close()


if __name__ == "__main__":
    run_service(main)
