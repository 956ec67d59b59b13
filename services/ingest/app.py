"""Builds the ingest gRPC server from its config and injected router and calendar."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health

from auditmesh.priority import CalendarSnapshot
from auditmesh.security.policy import IngestPolicy
from auditmesh.security.serving import server_security
from auditmesh.serving import create_server
from services.ingest.config import IngestConfig
from services.ingest.router import Router
from services.ingest.servicer import SERVICE, IngestServicer

__all__ = ["create"]


def create(
    cfg: IngestConfig, router: Router, calendar: Callable[[], CalendarSnapshot], *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int, IngestServicer, health.HealthServicer]:
    servicer = IngestServicer(
        router,
        cfg.limits,
        calendar,
        admit_wait_s=cfg.admit_wait_s,
        stream_read_ahead_bytes=cfg.stream_read_ahead_bytes,
        max_read_bytes=cfg.max_read_bytes,
        policy=IngestPolicy(cfg.security),
    )
    server, port, health_servicer = create_server(
        [servicer.handler()],
        [SERVICE],
        port=cfg.port,
        host=cfg.host,
        # Twice the limit reaches the servicer, so that a batch over the limit gets an answer of
        # its own (REFUSED) instead of ending the caller's whole stream.
        max_message_bytes=2 * cfg.limits.max_message_bytes,
        reuse_port=reuse_port,
        **server_security(cfg.security, "ingest"),
    )
    return server, port, servicer, health_servicer
