"""Builds the query gRPC server from its config and injected store."""

from __future__ import annotations

import secrets

import grpc
from grpc_health.v1 import health

from auditmesh.search import TokenSigner
from auditmesh.serving import create_server
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from services.query.config import QueryConfig
from services.query.servicer import EventReader, QueryServicer

__all__ = ["SERVICE", "create"]

SERVICE = "auditpb.v1.QueryService"


def create(cfg: QueryConfig, store: EventReader) -> tuple[grpc.aio.Server, int, QueryServicer, health.HealthServicer]:
    key = cfg.token_key.encode() if cfg.token_key else secrets.token_bytes(32)
    servicer = QueryServicer(store, TokenSigner(key))
    server, port, health_servicer = create_server([], [SERVICE], port=cfg.port, host=cfg.host)
    pb_grpc.add_QueryServiceServicer_to_server(servicer, server)
    return server, port, servicer, health_servicer
