"""Configuration of the scaler service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditmesh.config import ConfigError, Env, StoreConfig
from auditmesh.scaling.engine import EngineConfig
from auditmesh.scaling.forecast import ForecastConfig
from auditmesh.scaling.policy import PolicyConfig
from auditmesh.security.config import SecurityConfig

__all__ = ["ScalerConfig"]


@dataclass(frozen=True)
class ScalerConfig:
    host: str = "127.0.0.1"
    """Interface to listen on (AUDITMESH_SCALER_HOST)."""
    port: int = 50086
    """gRPC port: ScalerService, KEDA's ExternalScaler, health, reflection (AUDITMESH_SCALER_PORT)."""
    metrics_port: int = 0
    """Port of the Prometheus metrics endpoint; 0 turns it off (AUDITMESH_SCALER_METRICS_PORT)."""
    interval_s: float = 1.0
    """How often the policy is evaluated (AUDITMESH_SCALER_INTERVAL_S)."""
    actuator: str = "local"
    """``local`` (start and stop processor processes through the supervisor) or ``keda`` (KEDA
    reads the target and scales the Deployment) (AUDITMESH_SCALER_ACTUATOR)."""
    run_dir: str = ""
    """The supervisor's run directory, where the local actuator keeps pid and log files
    (AUDITMESH_SCALER_RUN_DIR; by default the directory of the supervisor that started the scaler,
    AUDITMESH_SUPERVISOR_DIR)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis holding processor membership (AUDITMESH_REDIS_URL)."""
    membership_prefix: str = "am:members"
    """Prefix of the membership keys of this mesh's processors (AUDITMESH_MEMBERSHIP_PREFIX)."""
    window_s: float = 10.0
    """Seconds of load reports kept (AUDITMESH_SCALER_WINDOW_S)."""
    calendar_refresh_s: float = 30.0
    """How often the wedding calendar is re-read (AUDITMESH_SCALER_CALENDAR_REFRESH_S)."""
    keda_metric: str = "auditmesh-processors"
    """Name of the metric served to KEDA (AUDITMESH_SCALER_KEDA_METRIC)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Policy (AUDITMESH_SCALER_MIN_REPLICAS 1, _MAX_REPLICAS 8, _EVENTS_PER_PROCESSOR 2000,
    _PROCESSING_P99_MS 50, _WRITE_P99_MS 10, _QUEUE_MIN_EVENTS 1000, _DETECTION_QUEUE_EVENTS 1000,
    _ALERT_DELIVERY_P99_MS 5000, _UP_AFTER 2, _DOWN_AFTER 5,
    _UP_COOLDOWN_S 5, _DOWN_COOLDOWN_S 120, _EMERGENCY_REPLICAS 4), forecast (_BASE_REPLICAS 1,
    _WEDDING_FACTOR 0.1, _SEASON_FACTOR 1.5, _WEEKEND_FACTOR 2.0, _WEDDING_HOURS 6, _LEAD_S 1800,
    _AHEAD_RATIO 1.2) and the number of Cassandra nodes for the storage recommendation
    (AUDITMESH_SCALER_STORE_NODES 1)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """Secure mode (AUDITMESH_SECURITY_DIR): TLS, and only clients with a certificate of the CA."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ScalerConfig:
        e = Env(env)
        p, f = PolicyConfig(), ForecastConfig()

        def n(name: str, default: float) -> float:
            return e.number(f"AUDITMESH_SCALER_{name}", default)

        def i(name: str, default: int, minimum: int = 0) -> int:
            return e.integer(f"AUDITMESH_SCALER_{name}", default, minimum=minimum)

        policy = PolicyConfig(
            min_replicas=i("MIN_REPLICAS", p.min_replicas, 1),
            max_replicas=i("MAX_REPLICAS", p.max_replicas, 1),
            events_per_processor=e.number("AUDITMESH_SCALER_EVENTS_PER_PROCESSOR", p.events_per_processor, minimum=1),
            processing_p99_ms=n("PROCESSING_P99_MS", p.processing_p99_ms),
            write_p99_ms=n("WRITE_P99_MS", p.write_p99_ms),
            queue_min_events=i("QUEUE_MIN_EVENTS", p.queue_min_events),
            detection_queue_events=i("DETECTION_QUEUE_EVENTS", p.detection_queue_events),
            alert_delivery_p99_ms=n("ALERT_DELIVERY_P99_MS", p.alert_delivery_p99_ms),
            up_after=i("UP_AFTER", p.up_after, 1),
            down_after=i("DOWN_AFTER", p.down_after, 1),
            up_cooldown_s=n("UP_COOLDOWN_S", p.up_cooldown_s),
            down_cooldown_s=n("DOWN_COOLDOWN_S", p.down_cooldown_s),
            emergency_replicas=i("EMERGENCY_REPLICAS", p.emergency_replicas, 1),
        )
        if policy.min_replicas > policy.max_replicas:
            raise ConfigError(
                f"AUDITMESH_SCALER_MIN_REPLICAS={policy.min_replicas} is over _MAX_REPLICAS={policy.max_replicas}"
            )
        actuator = e.text("AUDITMESH_SCALER_ACTUATOR", cls.actuator)
        if actuator not in {"local", "keda"}:
            raise ConfigError(f"AUDITMESH_SCALER_ACTUATOR={actuator!r}: local or keda")
        return cls(
            host=e.text("AUDITMESH_SCALER_HOST", cls.host),
            port=e.integer("AUDITMESH_SCALER_PORT", cls.port),
            metrics_port=e.integer("AUDITMESH_SCALER_METRICS_PORT", cls.metrics_port),
            interval_s=e.number("AUDITMESH_SCALER_INTERVAL_S", cls.interval_s, minimum=0.05),
            actuator=actuator,
            run_dir=e.text("AUDITMESH_SCALER_RUN_DIR", e.text("AUDITMESH_SUPERVISOR_DIR", cls.run_dir)),
            redis_url=e.text("AUDITMESH_REDIS_URL", cls.redis_url),
            membership_prefix=e.text("AUDITMESH_MEMBERSHIP_PREFIX", cls.membership_prefix),
            window_s=e.number("AUDITMESH_SCALER_WINDOW_S", cls.window_s, minimum=1),
            calendar_refresh_s=e.number("AUDITMESH_SCALER_CALENDAR_REFRESH_S", cls.calendar_refresh_s, minimum=0.1),
            keda_metric=e.text("AUDITMESH_SCALER_KEDA_METRIC", cls.keda_metric),
            engine=EngineConfig(
                policy=policy,
                forecast=ForecastConfig(
                    base_replicas=e.number("AUDITMESH_SCALER_BASE_REPLICAS", f.base_replicas, minimum=0.01),
                    wedding_factor=n("WEDDING_FACTOR", f.wedding_factor),
                    season_factor=n("SEASON_FACTOR", f.season_factor),
                    weekend_factor=n("WEEKEND_FACTOR", f.weekend_factor),
                    wedding_hours=n("WEDDING_HOURS", f.wedding_hours),
                    lead_s=n("LEAD_S", f.lead_s),
                    ahead_ratio=n("AHEAD_RATIO", f.ahead_ratio),
                ),
                store_nodes=i("STORE_NODES", 1, 1),
            ),
            store=StoreConfig.from_env(env),
            security=SecurityConfig.from_env(env),
        )
