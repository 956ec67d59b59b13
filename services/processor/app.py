"""Builds the processor's gRPC server from its config and injected store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health

from auditmesh.cache import VersionBumper
from auditmesh.serving import create_server
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.processor.config import ProcessorConfig
from services.processor.servicer import EventWriter, ProcessorServicer

__all__ = ["SERVICE", "create"]

SERVICE = "auditpb.v1.ProcessorService"


def create(
    cfg: ProcessorConfig,
    store: EventWriter,
    versions: VersionBumper,
    observe: Callable[[Sequence[pb.Event]], None] | None = None,
) -> tuple[grpc.aio.Server, int, ProcessorServicer, health.HealthServicer]:
    servicer = ProcessorServicer(
        store,
        versions,
        max_writes=cfg.max_writes,
        critical_writes=cfg.critical_writes,
        max_group_events=cfg.max_group_events,
        observe=observe,
    )
    server, port, health_servicer = create_server(
        [], [SERVICE], port=cfg.port, host=cfg.host, max_message_bytes=cfg.max_message_bytes
    )
    pb_grpc.add_ProcessorServiceServicer_to_server(servicer, server)
    return server, port, servicer, health_servicer
