"""Entry point: ``python -m services.query``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os

from auditmesh.serving import run_service
from auditmesh.store import EventStore
from services.query.app import create
from services.query.config import QueryConfig

log = logging.getLogger("auditmesh.query")


async def main(stop: asyncio.Event) -> None:
    cfg = QueryConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store)
    server, port, _servicer, health_servicer = create(cfg, store)
    await server.start()
    log.info("query serving on %s:%d", cfg.host, port)
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    store.close()


if __name__ == "__main__":
    run_service(main)
