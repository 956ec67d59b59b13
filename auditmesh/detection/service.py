"""Wiring of detection into the services: what ``services/processor/__main__.py`` and
``services/query/__main__.py`` call, so that their own change stays a few lines."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import redis.asyncio as aioredis

from auditmesh import cache
from auditmesh.config import StoreConfig
from auditmesh.detection.alerts import AlertStore, channel
from auditmesh.detection.config import DetectionConfig
from auditmesh.detection.detector import Detector
from auditmesh.detection.feed import AlertFeed
from auditmesh.telemetry.prometheus import counter, gauge, histogram

__all__ = ["build_detector", "build_feed", "close_detector", "detector_metrics", "feed_metrics"]


def build_detector(env: Mapping[str, str], redis_url: str, session: Any, store: StoreConfig) -> Detector:
    """The processor's detector (idle when AUDITMESH_DETECTION_RULES is empty). Its Redis client is
    its own: a slow correlation call must not hold up the cache-version bumps."""
    cfg = DetectionConfig.from_env(env)
    client: aioredis.Redis | None = None
    if cfg.rules_dir and redis_url:
        client = cache.connect(redis_url, cfg.redis_timeout_s)
    alerts = AlertStore(session, store.keyspace, store.max_batch_bytes) if cfg.rules_dir else None
    return Detector(cfg, client, alerts, store.keyspace)


async def close_detector(detector: Detector) -> None:
    await detector.shutdown()
    if detector.redis is not None:
        await detector.redis.aclose()


def build_feed(redis_url: str, keyspace: str) -> AlertFeed:
    return AlertFeed(redis_url, channel(keyspace))


def feed_metrics(f: AlertFeed) -> Iterator[str]:
    """The query service's live alert feed (SubscribeAlerts)."""
    yield gauge("auditmesh_alert_feed_subscribers", "SubscribeAlerts callers on the live feed.", f.subscribers)
    yield gauge("auditmesh_alert_feed_connected", "1 while the feed holds its Redis subscription.", f.connected)
    yield counter("auditmesh_alert_feed_received_total", "Alerts and updates received from Redis.", f.received)
    yield histogram(
        "auditmesh_alert_delivery_seconds",
        "New alerts: from ingest's receipt of the first triggering event to the handoff to a SubscribeAlerts caller.",
        f.delivery_us,
    )
    yield counter(
        "auditmesh_alert_feed_coalesced_total",
        "Updates of an open alert replaced by a later one before a slow caller read them.",
        f.coalesced,
    )
    yield counter(
        "auditmesh_alert_feed_dropped_total", "Alerts lost by callers too slow to read (bounded queues).", f.dropped
    )
    yield counter("auditmesh_alert_feed_reconnects_total", "Redis subscriptions lost and reopened.", f.reconnects)


def detector_metrics(d: Detector) -> Iterator[str]:
    yield gauge("auditmesh_detection_queue_events", "Events waiting for rule evaluation.", d.queue_events)
    yield counter("auditmesh_detection_events_evaluated_total", "Events evaluated against the rules.", d.evaluated)
    yield counter(
        "auditmesh_detection_events_dropped_total", "Events not evaluated: the detection queue was full.", d.dropped
    )
    yield counter("auditmesh_detection_alerts_raised_total", "New alerts raised.", d.alerts_raised)
    yield counter(
        "auditmesh_detection_alerts_updated_total", "Updates (running counts) of open alerts.", d.alerts_updated
    )
    yield counter(
        "auditmesh_detection_redis_errors_total",
        "Correlation calls to Redis that failed or timed out (each try counts).",
        d.redis_errors,
    )
    yield counter(
        "auditmesh_detection_redis_retries_total",
        "Correlation calls sent again after a failed try (the same round; a repeat is harmless).",
        d.redis_retries,
    )
    yield counter(
        "auditmesh_detection_degraded_updates_total",
        "Correlation group updates lost: Redis failed through the last try (correlation degraded).",
        d.degraded_updates,
    )
    yield counter("auditmesh_detection_publish_errors_total", "Alert publications that failed.", d.publish_errors)
    yield counter("auditmesh_detection_store_errors_total", "Alert writes to Cassandra that failed.", d.store_errors)
    yield counter("auditmesh_detection_rule_errors_total", "Rule reloads refused (bad files).", d.rule_errors)
    yield gauge("auditmesh_detection_rules", "Rules in force.", len(d.rules.detections) + len(d.rules.correlations))
    webhook = d.webhook
    yield counter(
        "auditmesh_alert_webhook_delivered_total",
        "Alerts delivered to the webhook.",
        webhook.delivered if webhook else 0,
    )
    yield counter("auditmesh_alert_webhook_retries_total", "Webhook retries.", webhook.retries if webhook else 0)
    yield counter(
        "auditmesh_alert_webhook_dead_total",
        "Alerts dead-lettered after the last retry.",
        webhook.dead if webhook else 0,
    )
