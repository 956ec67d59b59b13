"""Webhook delivery of alerts for paging tools: signed, retried with backoff, dead-lettered.

Each alert is POSTed as JSON (the ``Alert`` message in protobuf's JSON mapping) with

    X-Auditmesh-Timestamp: <unix seconds>
    X-Auditmesh-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the shared secret>

so a receiver can check both origin and freshness. Any answer other than 2xx, and any
connection error or timeout, is retried after ``backoff_s * 2**attempt`` (capped at 30 s), up to
``attempts`` tries in all; after the last one the alert is recorded as a dead letter. Deliveries
run concurrently (bounded), off the detection path: a slow receiver delays nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from google.protobuf import json_format

from auditmesh.metrics import percentile
from auditpb.v1 import alerts_pb2 as apb

__all__ = ["WebhookSender", "sign"]

log = logging.getLogger("auditmesh.detection")

DeadLetter = Callable[[apb.Alert, str, int, str], Awaitable[None]]


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        concurrency: int = 8,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be http(s)://host[:port]/path, got {url!r}")
        self.url = url
        self._parts = parts
        self._secret = secret
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._dead_letter = dead_letter
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.retries = 0
        self.dead = 0
        self.latency_ms: list[float] = []

    def latency_summary(self) -> dict[str, float | None]:
        """Delivery time of the last 1,000 delivered alerts (the successful try only)."""
        values = sorted(self.latency_ms)
        return {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}

    def send(self, alert: apb.Alert) -> None:
        """Deliver in the background; returns at once."""
        task = asyncio.create_task(self._deliver(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, alert: apb.Alert) -> None:
        body = json_format.MessageToJson(alert, indent=None).encode()
        error = ""
        async with self._slots:
            for attempt in range(self._attempts):
                if attempt:
                    self.retries += 1
                    await asyncio.sleep(min(30.0, self._backoff_s * 2 ** (attempt - 1)))
                started = time.perf_counter()
                try:
                    status = await asyncio.wait_for(self._post(body), self._timeout_s)
                except (OSError, TimeoutError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    continue
                if 200 <= status < 300:
                    self.delivered += 1
                    self.latency_ms.append((time.perf_counter() - started) * 1000)
                    del self.latency_ms[:-1000]
                    return
                error = f"HTTP {status}"
        self.dead += 1
        log.warning("alert %s undelivered to %s, %d tries: %s", alert.alert_id, self.url, self._attempts, error)
        if self._dead_letter is not None:
            try:
                await self._dead_letter(alert, self.url, self._attempts, error)
            except Exception as exc:  # the store is down too: the log line above is all that is left
                log.error("dead letter of alert %s not stored: %s", alert.alert_id, exc)

    async def _post(self, body: bytes) -> int:
        p = self._parts
        tls = p.scheme == "https"
        host = p.hostname or ""
        port = p.port or (443 if tls else 80)
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        timestamp = str(int(time.time()))
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {p.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nUser-Agent: auditmesh-alerts\r\n"
            f"X-Auditmesh-Timestamp: {timestamp}\r\n"
            f"X-Auditmesh-Signature: {sign(self._secret, timestamp, body)}\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection(host, port, ssl=tls or None)
        try:
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
