"""The live alert feed of a query service: one Redis subscription fanned out to every
``SubscribeAlerts`` caller.

The subscription is opened when the service starts and reopened (after a short pause) whenever
Redis drops it, so a caller's stream outlives a Redis restart; alerts published while it was
down are not replayed (``ListAlerts`` has them). Each caller has a bounded queue: a caller that
does not read loses its oldest alerts (counted), never slows the others.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auditpb.v1 import alerts_pb2 as apb

__all__ = ["AlertFeed"]

log = logging.getLogger("auditmesh.detection")
_QUEUE = 1000
_RECONNECT_S = 0.5


class AlertFeed:
    def __init__(self, url: str, channel: str) -> None:
        self._url = url
        self._channel = channel
        self._subscribers: set[asyncio.Queue[apb.Alert]] = set()
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.received = 0
        self.dropped = 0
        self.reconnects = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def join(self) -> asyncio.Queue[apb.Alert]:
        queue: asyncio.Queue[apb.Alert] = asyncio.Queue(_QUEUE)
        self._subscribers.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[apb.Alert]) -> None:
        self._subscribers.discard(queue)

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
            alert = apb.Alert.FromString(data)
        except Exception:
            log.warning("alert feed: a message that is not an Alert (%d bytes)", len(data))
            return
        self.received += 1
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(alert)
