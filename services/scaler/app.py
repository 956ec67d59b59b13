"""Builds the scaler's gRPC server from its config and an injected engine."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health

from auditmesh.scaling.engine import Engine
from auditmesh.security.serving import server_security
from auditmesh.serving import create_server
from auditpb.keda import externalscaler_pb2_grpc as kpb_grpc
from auditpb.v1 import scaler_pb2_grpc as spb_grpc
from services.scaler.config import ScalerConfig
from services.scaler.servicer import ExternalScalerServicer, ScalerServicer

__all__ = ["KEDA_SERVICE", "SERVICE", "create"]

SERVICE = "auditpb.v1.ScalerService"
KEDA_SERVICE = "externalscaler.ExternalScaler"


def create(cfg: ScalerConfig, engine: Engine) -> tuple[grpc.aio.Server, int, health.HealthServicer]:
    server, port, health_servicer = create_server(
        [], [SERVICE, KEDA_SERVICE], port=cfg.port, host=cfg.host, **server_security(cfg.security, "scaler")
    )
    spb_grpc.add_ScalerServiceServicer_to_server(ScalerServicer(engine), server)
    kpb_grpc.add_ExternalScalerServicer_to_server(
        ExternalScalerServicer(engine, cfg.keda_metric, cfg.interval_s), server
    )
    return server, port, health_servicer
