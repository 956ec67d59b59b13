"""Configuration of threat detection, read by the processor (and of alert serving, by query)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from auditmesh.config import ConfigError, Env

__all__ = ["DetectionConfig"]


@dataclass(frozen=True)
class DetectionConfig:
    rules_dir: str = ""
    """Directory of Sigma rule files (AUDITMESH_DETECTION_RULES, e.g. ``rules``); empty turns detection off."""
    roles_file: str = ""
    """JSON file ``{"wedding id": ["organization id", ...]}``: the organizations holding a role on
    each wedding, for ``organization_role`` (AUDITMESH_DETECTION_ROLES); empty: the field is never set."""
    reload_s: float = 2.0
    """How often the rule files and the roles file are checked for changes (AUDITMESH_DETECTION_RELOAD_S)."""
    max_pending_events: int = 200_000
    """Events waiting for evaluation past which new batches are not evaluated (counted as dropped)
    (AUDITMESH_DETECTION_MAX_PENDING_EVENTS). Ingestion never waits for detection."""
    redis_timeout_s: float = 0.5
    """How long the per-batch correlation call may take before it counts as failed
    (AUDITMESH_DETECTION_REDIS_TIMEOUT_S); doubled for each retry."""
    redis_attempts: int = 4
    """Tries of a round's correlation call before its updates are given up (counted as degraded)
    (AUDITMESH_DETECTION_REDIS_ATTEMPTS). A retry sends the same round again, which the state
    script makes safe."""
    store_updates_s: float = 10.0
    """How often the running counts of open alerts are re-stored in Cassandra
    (AUDITMESH_DETECTION_STORE_UPDATES_S): ``ListAlerts`` shows a count at most this much older
    than the one ``SubscribeAlerts`` streams (published every second). A new alert is stored within
    ``store_linger_s``."""
    store_linger_s: float = 0.1
    """How long the alerts delivered (already published) wait for company before they are written
    to Cassandra in one request (AUDITMESH_DETECTION_STORE_LINGER_S): a write costs the processor
    about the same whatever the number of alerts in it, and rounds of evaluation come tens of
    times a second. 0 writes as soon as the write before has ended."""
    webhook_url: str = ""
    """Where new alerts are POSTed (AUDITMESH_ALERT_WEBHOOK_URL); empty: no webhook."""
    webhook_secret: str = ""
    """HMAC-SHA256 key of the signature header (AUDITMESH_ALERT_WEBHOOK_SECRET); required with a URL."""
    webhook_attempts: int = 5
    """Tries per alert before it is dead-lettered (AUDITMESH_ALERT_WEBHOOK_ATTEMPTS)."""
    webhook_backoff_s: float = 0.5
    """Pause before the first retry, doubled for each next one (AUDITMESH_ALERT_WEBHOOK_BACKOFF_S)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DetectionConfig:
        e = Env(env)
        cfg = cls(
            rules_dir=e.text("AUDITMESH_DETECTION_RULES", cls.rules_dir),
            roles_file=e.text("AUDITMESH_DETECTION_ROLES", cls.roles_file),
            reload_s=e.number("AUDITMESH_DETECTION_RELOAD_S", cls.reload_s, minimum=0.1),
            max_pending_events=e.integer("AUDITMESH_DETECTION_MAX_PENDING_EVENTS", cls.max_pending_events, minimum=1),
            redis_timeout_s=e.number("AUDITMESH_DETECTION_REDIS_TIMEOUT_S", cls.redis_timeout_s, minimum=0.01),
            redis_attempts=e.integer("AUDITMESH_DETECTION_REDIS_ATTEMPTS", cls.redis_attempts, minimum=1),
            store_updates_s=e.number("AUDITMESH_DETECTION_STORE_UPDATES_S", cls.store_updates_s, minimum=0.0),
            store_linger_s=e.number("AUDITMESH_DETECTION_STORE_LINGER_S", cls.store_linger_s, minimum=0.0),
            webhook_url=e.text("AUDITMESH_ALERT_WEBHOOK_URL", cls.webhook_url),
            webhook_secret=e.text("AUDITMESH_ALERT_WEBHOOK_SECRET", cls.webhook_secret),
            webhook_attempts=e.integer("AUDITMESH_ALERT_WEBHOOK_ATTEMPTS", cls.webhook_attempts, minimum=1),
            webhook_backoff_s=e.number("AUDITMESH_ALERT_WEBHOOK_BACKOFF_S", cls.webhook_backoff_s, minimum=0.0),
        )
        if cfg.webhook_url and not cfg.webhook_secret:
            raise ConfigError("AUDITMESH_ALERT_WEBHOOK_SECRET must be set with AUDITMESH_ALERT_WEBHOOK_URL")
        return cfg
