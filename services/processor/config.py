"""Configuration of the processor service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditmesh.config import Env, StoreConfig
from auditmesh.security.config import SecurityConfig

__all__ = ["ProcessorConfig"]


@dataclass(frozen=True)
class ProcessorConfig:
    host: str = "127.0.0.1"
    """Interface to listen on (AUDITMESH_PROCESSOR_HOST)."""
    port: int = 50061
    """Port to listen on; 0 picks a free one (AUDITMESH_PROCESSOR_PORT)."""
    metrics_port: int = 0
    """Port of the Prometheus metrics endpoint (GET /metrics); 0 turns it off (AUDITMESH_PROCESSOR_METRICS_PORT)."""
    max_writes: int = 2
    """Concurrent batch writes of the normal lane (AUDITMESH_PROCESSOR_MAX_WRITES).
    Small on purpose: more only queues work inside the driver and Cassandra, where a critical
    write would wait behind it; the backlog waits in ingest and the SDK instead."""
    critical_writes: int = 4
    """Concurrent writes reserved for the critical lane, on top of max_writes
    (AUDITMESH_PROCESSOR_CRITICAL_WRITES)."""
    wedding_day_writes: int = 2
    """Concurrent writes reserved for the wedding-day lane (events of a wedding the calendar
    says is today), on top of max_writes and on the store's own connections for urgent writes
    (AUDITMESH_PROCESSOR_WEDDING_DAY_WRITES)."""
    max_group_events: int = 500
    """Most events written together when requests wait for a write slot (group commit)
    (AUDITMESH_PROCESSOR_MAX_GROUP_EVENTS)."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest request from ingest (AUDITMESH_PROCESSOR_MAX_MESSAGE_BYTES)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis whose cache versions the processor bumps after each write; empty disables
    (AUDITMESH_REDIS_URL). Must be the query service's Redis."""
    redis_timeout_s: float = 2.0
    """How long a version bump may take before it counts as failed (AUDITMESH_PROCESSOR_REDIS_TIMEOUT_S).
    A failed bump retires every cached page, so this is longer than the query service's read
    timeout: on a saturated host a bump can take a few hundred milliseconds without Redis failing."""
    membership_prefix: str = ""
    """Prefix of the Redis keys where the processor registers while it serves (in the Redis of
    AUDITMESH_REDIS_URL); empty: no membership, ingest has a static list (AUDITMESH_MEMBERSHIP_PREFIX)."""
    advertise: str = ""
    """host:port ingest reaches this processor on; by default host:port, or on Kubernetes the
    pod's address (AUDITMESH_PROCESSOR_ADVERTISE)."""
    scaler_target: str = ""
    """host:port of the scaler, which gets a load report every second; empty: none
    (AUDITMESH_SCALER_TARGET). Best effort: the processor works without it."""
    drain_wait_s: float = 10.0
    """On SIGTERM with membership: how long to wait for ingest to close its streams after the
    processor deregistered, before it stops reading them anyway (AUDITMESH_PROCESSOR_DRAIN_WAIT_S)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """TLS, tokens, rate limits, redaction, digests (AUDITMESH_SECURITY_DIR and others)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProcessorConfig:
        e = Env(env)
        return cls(
            host=e.text("AUDITMESH_PROCESSOR_HOST", cls.host),
            port=e.integer("AUDITMESH_PROCESSOR_PORT", cls.port),
            metrics_port=e.integer("AUDITMESH_PROCESSOR_METRICS_PORT", cls.metrics_port),
            max_writes=e.integer("AUDITMESH_PROCESSOR_MAX_WRITES", cls.max_writes, minimum=1),
            critical_writes=e.integer("AUDITMESH_PROCESSOR_CRITICAL_WRITES", cls.critical_writes, minimum=1),
            wedding_day_writes=e.integer("AUDITMESH_PROCESSOR_WEDDING_DAY_WRITES", cls.wedding_day_writes, minimum=1),
            max_group_events=e.integer("AUDITMESH_PROCESSOR_MAX_GROUP_EVENTS", cls.max_group_events, minimum=1),
            max_message_bytes=e.integer("AUDITMESH_PROCESSOR_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1024),
            redis_url=e.text("AUDITMESH_REDIS_URL", cls.redis_url),
            redis_timeout_s=e.number("AUDITMESH_PROCESSOR_REDIS_TIMEOUT_S", cls.redis_timeout_s, minimum=0.01),
            membership_prefix=e.text("AUDITMESH_MEMBERSHIP_PREFIX", cls.membership_prefix),
            advertise=e.text("AUDITMESH_PROCESSOR_ADVERTISE", cls.advertise),
            scaler_target=e.text("AUDITMESH_SCALER_TARGET", cls.scaler_target),
            drain_wait_s=e.number("AUDITMESH_PROCESSOR_DRAIN_WAIT_S", cls.drain_wait_s),
            store=StoreConfig.from_env(env),
            security=SecurityConfig.from_env(env),
        )
