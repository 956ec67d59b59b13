"""Configuration of the ingest service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditmesh.config import Env, StoreConfig
from auditmesh.security.config import SecurityConfig
from auditmesh.validation import Limits

__all__ = ["IngestConfig"]


@dataclass(frozen=True)
class IngestConfig:
    host: str = "127.0.0.1"
    """Interface to listen on (AUDITMESH_INGEST_HOST)."""
    port: int = 50051
    """Port to listen on; 0 picks a free one (AUDITMESH_INGEST_PORT)."""
    metrics_port: int = 0
    """Port of the Prometheus metrics endpoint (GET /metrics); 0 turns it off (AUDITMESH_INGEST_METRICS_PORT)."""
    processors: tuple[str, ...] = ("127.0.0.1:50061",)
    """Processor addresses, comma separated (AUDITMESH_PROCESSORS). When set, a static list that
    overrides membership."""
    membership_prefix: str = ""
    """Without AUDITMESH_PROCESSORS: prefix of the Redis keys where processors register; ingest
    links to every registered processor and follows joins and leaves (AUDITMESH_MEMBERSHIP_PREFIX)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding membership (AUDITMESH_REDIS_URL)."""
    membership_interval_s: float = 0.5
    """How often membership is read (AUDITMESH_MEMBERSHIP_INTERVAL_S)."""
    scaler_target: str = ""
    """host:port of the scaler, which gets a load report every second; empty: none
    (AUDITMESH_SCALER_TARGET). Best effort: ingest works without it."""
    max_in_flight_events: int = 200_000
    """Events accepted but not yet acknowledged by a processor; past it callers wait, then get
    RESOURCE_EXHAUSTED with retry info (AUDITMESH_INGEST_MAX_IN_FLIGHT_EVENTS)."""
    max_in_flight_bytes: int = 256 * 1024 * 1024
    """Bytes of those events (AUDITMESH_INGEST_MAX_IN_FLIGHT_BYTES)."""
    critical_in_flight_events: int = 20_000
    """The critical lane's own bound, so P0 events never wait behind bulk batches for room
    (AUDITMESH_INGEST_CRITICAL_IN_FLIGHT_EVENTS)."""
    critical_in_flight_bytes: int = 32 * 1024 * 1024
    """Bytes of those events (AUDITMESH_INGEST_CRITICAL_IN_FLIGHT_BYTES)."""
    wedding_day_in_flight_events: int = 40_000
    """The wedding-day lane's own bound (events of a wedding the calendar says is today), on
    its own links to the processors: such events never wait behind bulk batches for room, and
    never take more than this from the processors (AUDITMESH_INGEST_WEDDING_DAY_IN_FLIGHT_EVENTS)."""
    wedding_day_in_flight_bytes: int = 64 * 1024 * 1024
    """Bytes of those events (AUDITMESH_INGEST_WEDDING_DAY_IN_FLIGHT_BYTES)."""
    stream_read_ahead_bytes: int = 16 * 1024 * 1024
    """Bytes of one stream's batches read and not yet answered, with their acks; past it ingest
    stops reading that stream (HTTP/2 flow control pushes back on the caller), also when the
    caller does not read its acks (AUDITMESH_INGEST_STREAM_READ_AHEAD_BYTES)."""
    max_read_bytes: int = 96 * 1024 * 1024
    """The same over every call of the process (AUDITMESH_INGEST_MAX_READ_BYTES): what bounds
    ingest's memory. Parsed batches take about twice their wire size."""
    admit_wait_s: float = 2.0
    """How long a batch may wait for in-flight room before it is refused (AUDITMESH_INGEST_ADMIT_WAIT_S)."""
    processor_timeout_s: float = 15.0
    """How long to wait for a processor's answer before asking the caller to resend
    (AUDITMESH_PROCESSOR_TIMEOUT_S)."""
    calendar_refresh_s: float = 30.0
    """How often the wedding calendar is re-read (AUDITMESH_CALENDAR_REFRESH_S)."""
    limits: Limits = field(default_factory=Limits)
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """TLS, tokens, rate limits, redaction, digests (AUDITMESH_SECURITY_DIR and others)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestConfig:
        e = Env(env)
        return cls(
            host=e.text("AUDITMESH_INGEST_HOST", cls.host),
            port=e.integer("AUDITMESH_INGEST_PORT", cls.port),
            metrics_port=e.integer("AUDITMESH_INGEST_METRICS_PORT", cls.metrics_port),
            processors=tuple(e.items("AUDITMESH_PROCESSORS", list(cls.processors))),
            membership_prefix="" if env.get("AUDITMESH_PROCESSORS") else e.text("AUDITMESH_MEMBERSHIP_PREFIX", ""),
            redis_url=e.text("AUDITMESH_REDIS_URL", cls.redis_url),
            membership_interval_s=e.number("AUDITMESH_MEMBERSHIP_INTERVAL_S", cls.membership_interval_s, minimum=0.05),
            scaler_target=e.text("AUDITMESH_SCALER_TARGET", cls.scaler_target),
            max_in_flight_events=e.integer(
                "AUDITMESH_INGEST_MAX_IN_FLIGHT_EVENTS", cls.max_in_flight_events, minimum=1
            ),
            max_in_flight_bytes=e.integer("AUDITMESH_INGEST_MAX_IN_FLIGHT_BYTES", cls.max_in_flight_bytes, minimum=1),
            critical_in_flight_events=e.integer(
                "AUDITMESH_INGEST_CRITICAL_IN_FLIGHT_EVENTS", cls.critical_in_flight_events, minimum=1
            ),
            critical_in_flight_bytes=e.integer(
                "AUDITMESH_INGEST_CRITICAL_IN_FLIGHT_BYTES", cls.critical_in_flight_bytes, minimum=1
            ),
            wedding_day_in_flight_events=e.integer(
                "AUDITMESH_INGEST_WEDDING_DAY_IN_FLIGHT_EVENTS", cls.wedding_day_in_flight_events, minimum=1
            ),
            wedding_day_in_flight_bytes=e.integer(
                "AUDITMESH_INGEST_WEDDING_DAY_IN_FLIGHT_BYTES", cls.wedding_day_in_flight_bytes, minimum=1
            ),
            stream_read_ahead_bytes=e.integer(
                "AUDITMESH_INGEST_STREAM_READ_AHEAD_BYTES", cls.stream_read_ahead_bytes, minimum=1
            ),
            max_read_bytes=e.integer("AUDITMESH_INGEST_MAX_READ_BYTES", cls.max_read_bytes, minimum=1),
            admit_wait_s=e.number("AUDITMESH_INGEST_ADMIT_WAIT_S", cls.admit_wait_s),
            processor_timeout_s=e.number("AUDITMESH_PROCESSOR_TIMEOUT_S", cls.processor_timeout_s, minimum=0.1),
            calendar_refresh_s=e.number("AUDITMESH_CALENDAR_REFRESH_S", cls.calendar_refresh_s, minimum=1),
            limits=Limits.from_env(env),
            store=StoreConfig.from_env(env),
            security=SecurityConfig.from_env(env),
        )
