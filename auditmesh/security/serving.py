"""What a service's server and its channels to other services need in secure mode."""

from __future__ import annotations

from typing import Any

import grpc

from auditmesh.security.auth import AuthInterceptor
from auditmesh.security.certs import channel_credentials, server_credentials
from auditmesh.security.config import SecurityConfig
from auditmesh.security.ratelimit import RateLimiter
from auditmesh.security.tokens import TokenVerifier

__all__ = ["mesh_channel_credentials", "server_security"]

_MUTUAL = frozenset({"processor", "scaler"})
"""Services only other services call: they accept only clients with a certificate of the CA."""
_TOKENS = frozenset({"ingest", "query"})
"""Services callers reach with tokens."""


def server_security(cfg: SecurityConfig, service: str) -> dict[str, Any]:
    """Keyword arguments of :func:`auditmesh.serving.create_server` for ``service``: TLS
    credentials (mutual for internal services) and the token interceptor for the public ones;
    nothing in insecure mode."""
    if not cfg.enabled:
        return {}
    out: dict[str, Any] = {"credentials": server_credentials(cfg.path, service, require_client_cert=service in _MUTUAL)}
    if service in _TOKENS:
        limits = RateLimiter(cfg.calls_per_s, cfg.calls_burst) if service == "query" else None
        out["interceptors"] = [AuthInterceptor(TokenVerifier.from_directory(cfg.path), limits)]
    return out


def mesh_channel_credentials(cfg: SecurityConfig, service: str) -> grpc.ChannelCredentials | None:
    """Credentials of ``service``'s channels to other services (its own certificate), or None."""
    return channel_credentials(cfg.path, service) if cfg.enabled else None
