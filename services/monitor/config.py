"""Configuration of the performance monitor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditmesh.config import ConfigError, Env, StoreConfig
from auditmesh.security.config import SecurityConfig
from auditmesh.telemetry.monitor import Hysteresis, Thresholds

__all__ = ["MonitorConfig"]


@dataclass(frozen=True)
class MonitorConfig:
    host: str = "127.0.0.1"
    """Interface to listen on for health checks (AUDITMESH_MONITOR_HOST)."""
    port: int = 50081
    """gRPC port (health checking only); 0 picks a free one (AUDITMESH_MONITOR_PORT)."""
    metrics_port: int = 0
    """Port of the monitor's own Prometheus endpoint; 0 turns it off (AUDITMESH_MONITOR_METRICS_PORT)."""
    targets: tuple[tuple[str, str], ...] = ()
    """Metrics endpoints to check, ``name=host:port`` comma separated (AUDITMESH_MONITOR_TARGETS)."""
    interval_s: float = 1.0
    """How often the checks run (AUDITMESH_MONITOR_INTERVAL_S)."""
    scrape_timeout_s: float = 0.8
    """How long one scrape may take before the endpoint counts as unreachable
    (AUDITMESH_MONITOR_SCRAPE_TIMEOUT_S)."""
    thresholds: Thresholds = field(default_factory=Thresholds)
    """Event processing (AUDITMESH_MONITOR_PROCESSING_MS, 1), storage write
    (AUDITMESH_MONITOR_WRITE_MS, 5), alert delivery (AUDITMESH_MONITOR_ALERT_DELIVERY_MS, 100),
    system overhead as a share of one core (AUDITMESH_MONITOR_OVERHEAD, 0.001), and the factor
    applied to the latency thresholds on a wedding day (AUDITMESH_MONITOR_WEDDING_DAY_FACTOR, 0.5)."""
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    """Intervals over the threshold before an alert is raised (AUDITMESH_MONITOR_RAISE_AFTER, 1),
    intervals at or under the clear level before it clears (AUDITMESH_MONITOR_CLEAR_AFTER, 3),
    and the clear level as a share of the threshold (AUDITMESH_MONITOR_CLEAR_RATIO, 0.8)."""
    calendar_refresh_s: float = 30.0
    """How often the wedding calendar is re-read (AUDITMESH_MONITOR_CALENDAR_REFRESH_S)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis where alerts are stored; empty keeps them in the monitor only (AUDITMESH_REDIS_URL)."""
    alert_prefix: str = "am:perf"
    """Prefix of the Redis keys of the alerts, one per mesh (AUDITMESH_MONITOR_ALERT_PREFIX)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """TLS, tokens, rate limits, redaction, digests (AUDITMESH_SECURITY_DIR and others)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MonitorConfig:
        e = Env(env)
        targets: list[tuple[str, str]] = []
        for item in e.items("AUDITMESH_MONITOR_TARGETS", []):
            name, sep, address = item.partition("=")
            if not sep or not name or not address:
                raise ConfigError(f"AUDITMESH_MONITOR_TARGETS: {item!r} is not name=host:port")
            targets.append((name, address))
        base = Thresholds()
        ratio = e.number("AUDITMESH_MONITOR_CLEAR_RATIO", Hysteresis.clear_ratio)
        if ratio > 1:
            raise ConfigError(f"AUDITMESH_MONITOR_CLEAR_RATIO={ratio}: must be <= 1")
        return cls(
            host=e.text("AUDITMESH_MONITOR_HOST", cls.host),
            port=e.integer("AUDITMESH_MONITOR_PORT", cls.port),
            metrics_port=e.integer("AUDITMESH_MONITOR_METRICS_PORT", cls.metrics_port),
            targets=tuple(targets),
            interval_s=e.number("AUDITMESH_MONITOR_INTERVAL_S", cls.interval_s, minimum=0.05),
            scrape_timeout_s=e.number("AUDITMESH_MONITOR_SCRAPE_TIMEOUT_S", cls.scrape_timeout_s, minimum=0.01),
            thresholds=Thresholds(
                processing_s=e.number("AUDITMESH_MONITOR_PROCESSING_MS", base.processing_s * 1000) / 1000,
                write_s=e.number("AUDITMESH_MONITOR_WRITE_MS", base.write_s * 1000) / 1000,
                alert_delivery_s=e.number("AUDITMESH_MONITOR_ALERT_DELIVERY_MS", base.alert_delivery_s * 1000) / 1000,
                overhead=e.number("AUDITMESH_MONITOR_OVERHEAD", base.overhead),
                wedding_day_factor=e.number("AUDITMESH_MONITOR_WEDDING_DAY_FACTOR", base.wedding_day_factor),
            ),
            hysteresis=Hysteresis(
                raise_after=e.integer("AUDITMESH_MONITOR_RAISE_AFTER", Hysteresis.raise_after, minimum=1),
                clear_after=e.integer("AUDITMESH_MONITOR_CLEAR_AFTER", Hysteresis.clear_after, minimum=1),
                clear_ratio=ratio,
            ),
            calendar_refresh_s=e.number("AUDITMESH_MONITOR_CALENDAR_REFRESH_S", cls.calendar_refresh_s, minimum=0.1),
            redis_url=e.text("AUDITMESH_REDIS_URL", cls.redis_url),
            alert_prefix=e.text("AUDITMESH_MONITOR_ALERT_PREFIX", cls.alert_prefix),
            store=StoreConfig.from_env(env),
            security=SecurityConfig.from_env(env),
        )
