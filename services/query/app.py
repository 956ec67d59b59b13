"""Builds the query gRPC server from its config and injected store and cache."""

from __future__ import annotations

import secrets

import grpc
from grpc_health.v1 import health

from auditmesh.cache import PageCache
from auditmesh.search import PageBounds, TokenSigner
from auditmesh.security.policy import ReadScope
from auditmesh.security.serving import server_security
from auditmesh.serving import create_server
from auditpb.v1 import audit_pb2 as pb
from services.query.config import QueryConfig
from services.query.servicer import EventReader, QueryServicer

__all__ = ["SERVICE", "create"]

SERVICE = "auditpb.v1.QueryService"


def _raw(page: bytes) -> bytes:
    return page


def create(
    cfg: QueryConfig, store: EventReader, cache: PageCache
) -> tuple[grpc.aio.Server, int, QueryServicer, health.HealthServicer]:
    key = cfg.token_key.encode() if cfg.token_key else secrets.token_bytes(32)
    bounds = PageBounds(max_bytes=cfg.max_page_bytes, max_scanned=cfg.max_scan_rows)
    servicer = QueryServicer(store, TokenSigner(key), cache, bounds=bounds, limits=cfg.limits, scope=ReadScope())
    # Search yields pages already serialized, so cached pages go out as the bytes Redis holds.
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            # Requests are parsed by the servicer, so a malformed one is INVALID_ARGUMENT.
            "Search": grpc.unary_stream_rpc_method_handler(servicer.Search, None, _raw),
            "GetEvent": grpc.unary_unary_rpc_method_handler(servicer.GetEvent, None, pb.Event.SerializeToString),
        },
    )
    server, port, health_servicer = create_server(
        [handler], [SERVICE], port=cfg.port, host=cfg.host, **server_security(cfg.security, "query")
    )
    return server, port, servicer, health_servicer
