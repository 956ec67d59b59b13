"""How the operator tools connect in secure mode: TLS that verifies the services against the
mesh's CA (with the operator certificate, which internal services require) and a bearer token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from auditmesh.security.certs import channel_credentials

__all__ = [
    "DEFAULT_DIR",
    "call_metadata",
    "client_options",
    "operator_channel",
    "operator_credentials",
    "security_dir",
]

DEFAULT_DIR = Path.home() / ".local" / "share" / "auditmesh" / "security"


def security_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """AUDITMESH_SECURITY_DIR when set (secure mode), else None."""
    value = (os.environ if env is None else env).get("AUDITMESH_SECURITY_DIR", "")
    return Path(value) if value else None


def operator_credentials(env: Mapping[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """TLS with the operator certificate in secure mode; None in insecure mode."""
    directory = security_dir(env)
    return None if directory is None else channel_credentials(directory, "operator")


def operator_channel(target: str, env: Mapping[str, str] | None = None) -> grpc.Channel:
    credentials = operator_credentials(env)
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def client_options(token: str | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of :class:`auditmesh.AuditClient` for the tools: the token, and TLS
    with the mesh's CA in secure mode."""
    directory = security_dir(env)
    return {"token": token, "credentials": channel_credentials(directory) if directory else None}
