"""Entry point: ``python -m services.processor``. Reads config once, wires, serves until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from auditmesh import cache
from auditmesh.cache import VersionBumper
from auditmesh.detection.service import build_detector, close_detector, detector_metrics
from auditmesh.metrics import RuntimeStats, StatsPublisher
from auditmesh.scaling.membership import Membership
from auditmesh.scaling.reports import ProcessorReports, Reporter
from auditmesh.security.chains import digest_chains
from auditmesh.security.serving import mesh_channel_credentials
from auditmesh.serving import freeze_startup_objects, run_service
from auditmesh.store import EventStore
from auditmesh.telemetry import collectors, prometheus
from auditmesh.telemetry.instruments import WriteWatch
from services.processor.app import create
from services.processor.config import ProcessorConfig
from services.processor.drain import wait_streams_closed

log = logging.getLogger("auditmesh.processor")


async def main(stop: asyncio.Event) -> None:
    cfg = ProcessorConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store)
    redis_client = cache.connect(cfg.redis_url, cfg.redis_timeout_s) if cfg.redis_url else None
    versions = VersionBumper(redis_client)
    writes = WriteWatch(store)
    chains = await digest_chains(cfg.security, store.session, store.urgent_session, cfg.store)
    detector = build_detector(os.environ, cfg.redis_url, store.session, cfg.store)
    server, port, servicer, health_servicer = create(
        cfg,
        writes,
        versions,
        (chains[0].append, chains[1].append) if chains else None,
        observe=detector.offer,
    )
    runtime = RuntimeStats()
    publisher = StatsPublisher(
        os.environ.get("AUDITMESH_STATS_FILE"),
        lambda: {**servicer.stats(), **runtime.summary(), **detector.stats()},
    )

    def reset_latencies() -> None:
        servicer.reset_latencies()
        runtime.reset()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, reset_latencies)
    publishing = asyncio.create_task(publisher.run())
    runtime.start()
    metrics = prometheus.serve(
        "processor",
        [
            lambda: collectors.processor_metrics(servicer, writes, versions),
            lambda: prometheus.runtime_metrics(runtime),
            lambda: detector_metrics(detector),
        ],
        host=cfg.host,
        port=cfg.metrics_port,
    )
    detector.start()
    freeze_startup_objects()
    await server.start()
    log.info("processor serving on %s:%d", cfg.host, port)
    address = cfg.advertise or f"{cfg.host}:{port}"
    scaling: list[asyncio.Task[None]] = []
    if cfg.scaler_target:
        scaling.append(
            asyncio.create_task(
                Reporter(
                    cfg.scaler_target,
                    ProcessorReports(address, servicer, writes, lambda: detector.stats()["detection"]).build,
                    credentials=mesh_channel_credentials(cfg.security, "processor"),
                ).run()
            )
        )
    leave = asyncio.Event()
    if cfg.membership_prefix and redis_client is not None:
        membership = Membership(redis_client, cfg.membership_prefix)
        scaling.append(asyncio.create_task(membership.heartbeat(address, leave)))
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    if cfg.membership_prefix and redis_client is not None:
        # Drain: deregister, let ingest retire its links (each once its requests are answered)
        # and close its streams, then stop.
        leave.set()
        await asyncio.gather(*scaling[-1:], return_exceptions=True)
        closed = await wait_streams_closed(servicer, cfg.drain_wait_s)
        log.info("deregistered %s; streams %s", address, "closed" if closed else "still open, stopping anyway")
    for task in scaling:
        task.cancel()
    servicer.draining.set()
    # In-flight writes finish and are answered; ingest resends anything it sees no answer for.
    await server.stop(grace=10)
    await close_detector(detector)
    publishing.cancel()
    runtime.stop()
    publisher.publish()
    metrics.stop()
    for chain in chains:
        await chain.close()
    await versions.close()
    if redis_client is not None:
        await redis_client.aclose()
    store.close()
    log.info("processor stopped: %d written, %d failed", servicer.written, servicer.failed)


if __name__ == "__main__":
    run_service(main)
