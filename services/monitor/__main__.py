"""Entry point: ``python -m services.monitor``. Reads config once, wires, checks until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh import cache
from auditmesh.metrics import RuntimeStats
from auditmesh.serving import run_service
from auditmesh.store import EventStore
from auditmesh.telemetry import prometheus
from services.monitor.app import create
from services.monitor.config import MonitorConfig

log = logging.getLogger("auditmesh.monitor")


async def main(stop: asyncio.Event) -> None:
    cfg = MonitorConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store, executor_threads=1)
    redis_client = cache.connect(cfg.redis_url, 1.0) if cfg.redis_url else None
    server, port, monitor, health_servicer = create(cfg, store.calendar, redis_client)
    runtime = RuntimeStats()
    runtime.start()
    metrics = prometheus.serve(
        "monitor", [monitor.metrics, lambda: prometheus.runtime_metrics(runtime)], host=cfg.host, port=cfg.metrics_port
    )
    checking = asyncio.create_task(monitor.run())
    await server.start()
    log.info("monitor serving on %s:%d, checking %s", cfg.host, port, ", ".join(n for n, _ in cfg.targets))
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    checking.cancel()
    await asyncio.gather(checking, return_exceptions=True)
    await server.stop(grace=1)
    runtime.stop()
    metrics.stop()
    if redis_client is not None:
        await redis_client.aclose()
    store.close()


if __name__ == "__main__":
    run_service(main)
