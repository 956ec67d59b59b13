"""Builds the monitor from its config and injected store calendar and Redis client: a gRPC
server for health checking, and the checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health

from auditmesh.priority import CalendarEntry
from auditmesh.security.serving import server_security
from auditmesh.serving import create_server
from auditmesh.telemetry.monitor import AlertBoard, Checks, PerformanceMonitor
from services.monitor.config import MonitorConfig

__all__ = ["create"]


def create(
    cfg: MonitorConfig, calendar: Callable[[], Awaitable[list[CalendarEntry]]], redis_client: aioredis.Redis | None
) -> tuple[grpc.aio.Server, int, PerformanceMonitor, health.HealthServicer]:
    monitor = PerformanceMonitor(
        dict(cfg.targets),
        Checks(cfg.thresholds, cfg.hysteresis),
        AlertBoard(redis_client, cfg.alert_prefix),
        calendar,
        interval_s=cfg.interval_s,
        scrape_timeout_s=cfg.scrape_timeout_s,
        calendar_refresh_s=cfg.calendar_refresh_s,
    )
    server, port, health_servicer = create_server(
        [], [], port=cfg.port, host=cfg.host, **server_security(cfg.security, "monitor")
    )
    return server, port, monitor, health_servicer
