"""Entry point: ``python -m services.scaler``. Reads config once, wires, evaluates until SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from auditmesh import cache
from auditmesh.mesh import MeshLayout
from auditmesh.metrics import RuntimeStats
from auditmesh.scaling.actuators import Actuator, KedaActuator, LocalActuator
from auditmesh.scaling.calendar import Wedding, load_weddings
from auditmesh.scaling.engine import Engine
from auditmesh.scaling.membership import Membership, watch
from auditmesh.scaling.reports import ReportWindow
from auditmesh.serving import run_service
from auditmesh.store import EventStore
from auditmesh.supervisor import Supervisor
from auditmesh.telemetry import prometheus
from services.scaler.app import create
from services.scaler.config import ScalerConfig

log = logging.getLogger("auditmesh.scaler")
_NOT_PASSED = ("AUDITMESH_STATS_FILE", "AUDITMESH_SUPERVISOR_DIR", "AUDITMESH_SCALER_")
"""Variables of the scaler's own process that the processors it starts must not inherit."""


def _local_actuator(cfg: ScalerConfig) -> LocalActuator:
    if not cfg.run_dir:
        raise SystemExit("AUDITMESH_SCALER_RUN_DIR (or AUDITMESH_SUPERVISOR_DIR) is needed by the local actuator")
    layout = MeshLayout.from_env(os.environ)
    passed = {k: v for k, v in layout.extra_env.items() if not k.startswith(_NOT_PASSED)}
    layout = dataclasses.replace(layout, extra_env=passed)
    return LocalActuator(layout, Supervisor(Path(cfg.run_dir)))


def _metrics(engine: Engine) -> Iterator[str]:
    status = engine.status()
    yield prometheus.gauge("auditmesh_scaler_processors", "Processors running now.", float(status.current))
    yield prometheus.gauge("auditmesh_scaler_target", "Processors the scaler wants.", float(status.target))
    yield prometheus.gauge(
        "auditmesh_scaler_floor", "The predictive floor (raised in emergency mode).", float(status.floor)
    )
    yield prometheus.gauge("auditmesh_scaler_emergency", "1 in emergency (wedding day) mode.", float(status.emergency))
    yield prometheus.gauge(
        "auditmesh_scaler_storage_recommended",
        "1 while write latency says the Cassandra cluster needs capacity (see auditmesh scaler status).",
        float(bool(status.storage_recommendation)),
    )
    yield prometheus.gauge(
        "auditmesh_scaler_write_p99_seconds", "Write latency p99 the scaler sees.", status.write_p99_us / 1e6
    )
    yield prometheus.counter("auditmesh_scaler_reports_total", "Load reports received.", float(engine.window.received))


async def main(stop: asyncio.Event) -> None:
    cfg = ScalerConfig.from_env(os.environ)
    store = EventStore.connect(cfg.store, executor_threads=1)
    redis_client = cache.connect(cfg.redis_url, 1.0)
    membership = Membership(redis_client, cfg.membership_prefix)
    members: list[str] = []
    weddings: list[Wedding] = []

    def set_members(live: list[str]) -> None:
        members[:] = live

    actuator: Actuator
    if cfg.actuator == "local":
        actuator = _local_actuator(cfg)
    else:
        actuator = KedaActuator(lambda: len(members))
    window = ReportWindow(cfg.window_s)
    engine = Engine(cfg.engine, window, actuator, weddings=lambda: weddings, members=lambda: members)

    async def refresh_calendar() -> None:
        while True:
            try:
                weddings[:] = await asyncio.to_thread(load_weddings, store.session, cfg.store.keyspace)
            except Exception as exc:  # the store is down: keep the last calendar
                log.warning("wedding calendar not refreshed, keeping %d weddings: %s", len(weddings), exc)
            await asyncio.sleep(cfg.calendar_refresh_s)

    async def evaluate() -> None:
        while True:
            try:
                await engine.tick()
            except Exception:
                log.exception("scaling evaluation failed")
            await asyncio.sleep(cfg.interval_s)

    server, port, health_servicer = create(cfg, engine)
    runtime = RuntimeStats()
    runtime.start()
    metrics = prometheus.serve(
        "scaler",
        [lambda: _metrics(engine), lambda: prometheus.runtime_metrics(runtime)],
        host=cfg.host,
        port=cfg.metrics_port,
    )
    tasks: Sequence[asyncio.Task[None]] = [
        asyncio.create_task(refresh_calendar()),
        asyncio.create_task(watch(membership, set_members)),
        asyncio.create_task(evaluate()),
    ]
    await server.start()
    log.info("scaler serving on %s:%d, actuator %s", cfg.host, port, actuator.name)
    await stop.wait()
    health_servicer.enter_graceful_shutdown()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await actuator.close()
    await server.stop(grace=1)
    runtime.stop()
    metrics.stop()
    await redis_client.aclose()
    store.close()


if __name__ == "__main__":
    run_service(main)
