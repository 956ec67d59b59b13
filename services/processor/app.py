"""Builds the processor's gRPC server from its config and injected store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health

from auditmesh.cache import VersionBumper
from auditmesh.security.serving import server_security
from auditmesh.serving import create_server
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.processor.config import ProcessorConfig
from services.processor.drain import CountedProcessorServicer
from services.processor.group_commit import Digest
from services.processor.servicer import EventWriter

__all__ = ["SERVICE", "create"]

SERVICE = "auditpb.v1.ProcessorService"


def create(
    cfg: ProcessorConfig,
    store: EventWriter,
    versions: VersionBumper,
    digests: tuple[Digest, Digest] | None = None,
    observe: Callable[[Sequence[pb.Event], str], None] | None = None,
) -> tuple[grpc.aio.Server, int, CountedProcessorServicer, health.HealthServicer]:
    servicer = CountedProcessorServicer(
        store,
        versions,
        max_writes=cfg.max_writes,
        critical_writes=cfg.critical_writes,
        wedding_day_writes=cfg.wedding_day_writes,
        max_group_events=cfg.max_group_events,
        digests=digests,
        observe=observe,
    )
    server, port, health_servicer = create_server(
        [],
        [SERVICE],
        port=cfg.port,
        host=cfg.host,
        max_message_bytes=cfg.max_message_bytes,
        **server_security(cfg.security, "processor"),
    )
    pb_grpc.add_ProcessorServiceServicer_to_server(servicer, server)
    return server, port, servicer, health_servicer
