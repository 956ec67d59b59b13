"""The live alert feed of a query service: one Redis subscription fanned out to every
``SubscribeAlerts`` caller. Processors publish ``AlertBatch`` messages (a round's alerts, or a
second's running counts, in one message).

The subscription is opened when the service starts and reopened (after a short pause) whenever
Redis drops it, so a caller's stream outlives a Redis restart; alerts published while it was
down are not replayed (``ListAlerts`` has them).

Each caller has a :class:`Subscription` of its own, so a caller that does not read never slows
the others. New alerts go out before updates of open ones: every processor re-publishes the
running counts of its open alerts once a second, hundreds at a time during a wide attack, and a
new alert must not wait behind that burst. Updates are coalesced by alert: a caller gets an open
alert's latest count, not every count it went through while the caller was busy. Past the
bounds a caller loses its oldest new alerts or pending updates (counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auditmesh.detection.alerts import alerts_of_message
from auditmesh.metrics import Reservoir
from auditpb.v1 import alerts_pb2 as apb

__all__ = ["AlertFeed", "Subscription", "is_update"]

log = logging.getLogger("auditmesh.detection")
_QUEUE = 1000
_RECONNECT_S = 0.5


def is_update(alert: apb.Alert) -> bool:
    """A later version of an open alert (its running count moved), not the alert's first."""
    return alert.updated_at.ToNanoseconds() > alert.created_at.ToNanoseconds()


class Subscription:
    """One caller's alerts still to send: new ones in order of arrival, then the latest version of
    each open alert that was updated meanwhile."""

    def __init__(self, bound: int = _QUEUE) -> None:
        self._bound = bound
        self._new: deque[apb.Alert] = deque()
        self._updates: dict[str, apb.Alert] = {}
        self._ready = asyncio.Event()
        self.dropped = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._new) + len(self._updates)

    def put(self, alert: apb.Alert) -> None:
        if not is_update(alert):
            if len(self._new) >= self._bound:
                self._new.popleft()
                self.dropped += 1
            self._new.append(alert)
        elif (pending := self._updates.get(alert.alert_id)) is not None:
            # Keeps its place in line; the caller gets the highest count (counts only grow, and
            # two processors' publications may arrive out of order).
            if alert.count >= pending.count:
                self._updates[alert.alert_id] = alert
            self.coalesced += 1
        else:
            if len(self._updates) >= self._bound:
                del self._updates[next(iter(self._updates))]
                self.dropped += 1
            self._updates[alert.alert_id] = alert
        self._ready.set()

    async def get(self) -> apb.Alert:
        while not self:
            self._ready.clear()
            await self._ready.wait()
        if self._new:
            return self._new.popleft()
        alert_id = next(iter(self._updates))
        return self._updates.pop(alert_id)


class AlertFeed:
    def __init__(self, url: str, channel: str) -> None:
        self._url = url
        self._channel = channel
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.received = 0
        self.reconnects = 0
        self._gone_dropped = 0
        self._gone_coalesced = 0
        self.delivery_us = Reservoir()
        """New alerts, ingest's receipt of the first triggering event to the handoff to a caller."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def join(self) -> Subscription:
        subscription = Subscription()
        self._subscribers.add(subscription)
        return subscription

    def leave(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.discard(subscription)
            self._gone_dropped += subscription.dropped
            self._gone_coalesced += subscription.coalesced

    @property
    def dropped(self) -> int:
        """Alerts that callers too slow to read lost (the bounds of :class:`Subscription`)."""
        return self._gone_dropped + sum(s.dropped for s in self._subscribers)

    @property
    def coalesced(self) -> int:
        """Updates replaced by a later version of their alert before a caller read them."""
        return self._gone_coalesced + sum(s.coalesced for s in self._subscribers)

    def handed(self, alert: apb.Alert) -> None:
        """``alert`` goes to a caller now: a new one's delivery time is recorded (an update's is not:
        running counts go out once a second by design)."""
        received_us = alert.trigger_received_at_us
        if received_us and not is_update(alert):
            self.delivery_us.add(max(0, int(time.time() * 1_000_000) - received_us))

    @property
    def connected(self) -> int:
        return int(self.subscribed.is_set())

    def stats(self) -> dict[str, object]:
        return {
            "delivery_us": self.delivery_us.summary(),
            "subscribers": self.subscribers,
            "connected": self.connected,
            "received": self.received,
            "coalesced": self.coalesced,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
        }

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _run(self) -> None:
        while True:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=2.0, health_check_interval=10)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.subscribed.set()
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is None or message.get("type") != "message":
                            continue
                        self._fan_out(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                self.reconnects += 1
                log.warning("alert feed lost its Redis subscription (%s); reopening", exc)
                await asyncio.sleep(_RECONNECT_S)
            finally:
                await client.aclose()

    def _fan_out(self, data: bytes) -> None:
        try:
            alerts = alerts_of_message(data)
        except Exception:
            log.warning("alert feed: a message that is not an AlertBatch (%d bytes)", len(data))
            return
        self.received += len(alerts)
        for alert in alerts:
            for subscription in self._subscribers:
                subscription.put(alert)
