"""The detector a processor runs beside its writes: takes each batch as it arrives, evaluates the
rules, keeps correlation state in Redis, publishes, stores and delivers alerts.

Its contract with the write path: :meth:`Detector.offer` only appends the batch to a bounded
queue and returns, so a write never waits for detection, and detection never waits for a
write (it runs on the events as they arrive, before they are stored). Batches that queued up
while the detector was busy are evaluated together, so the Redis calls per batch shrink under
load rather than grow. Per round: one script call for every correlation and suppression update
of the round, one pipelined PUBLISH of its alerts, then the Cassandra writes of the alerts and
the webhook deliveries in the background. Alerts of detection rules without a window (any P0
event) are published as soon as their round is evaluated, and a round's correlation call runs in
a task of its own while the next round is evaluated (the calls stay one at a time, in order); a
batch holding a P0 event is evaluated without waiting for earlier rounds' calls (up to
``_MAX_UNSETTLED`` rounds ahead), so P0 alerts never wait for Redis, not even while a slow call
or its retries hold up the rounds before them; one that arrives while a round is evaluated joins
it at the next chunk, so it does not wait for the round either. Updates of open alerts (their
running counts) are coalesced, published once a second (by one processor of those that counted
them) and stored every ``store_updates_s``: see :mod:`.counts`.

A failed or timed-out correlation call is retried with the same round (``redis_retries``; the
state script makes a repeat harmless), so a call lost under load costs time, not counts. When
Redis stays unreachable through the last try (``AUDITMESH_DETECTION_REDIS_ATTEMPTS``) the round's
correlation updates are lost (counted: ``redis_errors``, ``degraded_updates``); alerts of rules
without state are still raised; ingestion is untouched.
Rule files are re-read when they change (checked every ``reload_s``); a bad edit is logged and
counted, and the previous rules stay in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from auditmesh.detection.alerts import (
    REQUEST_TIMEOUT_S,
    AlertStore,
    alert_of_firing,
    alert_of_hit,
    batch_messages,
    channel,
)
from auditmesh.detection.config import DetectionConfig
from auditmesh.detection.counts import UPDATE_EVERY_S, RunningCounts
from auditmesh.detection.evaluator import Evaluation, Hit, Update, evaluate
from auditmesh.detection.roles import RoleFile
from auditmesh.detection.rules import RuleError, RuleSet, load_rules
from auditmesh.detection.state import CorrelationState, Firing
from auditmesh.detection.webhook import WebhookSender
from auditmesh.metrics import Reservoir
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Detector"]

log = logging.getLogger("auditmesh.detection")
_ROUND_EVENTS = 5000
"""Most events evaluated in one round (one Redis call)."""
_CHUNK = 500
"""Events evaluated between yields to the event loop, so a critical write is not held up."""
_MAX_UNSETTLED = 8
"""Most rounds evaluated ahead of their correlation calls, when batches holding P0 events keep
the evaluation going while Redis is slow."""
_RETRY_PAUSE_S = 0.05
"""Pause before the first retry of a failed correlation call, doubled for each next one."""


@dataclass(frozen=True)
class _Round:
    """A round evaluated, its stateless alerts published, its correlation updates still to apply."""

    started: float
    now_ms: int
    raised: list[apb.Alert]
    updates: list[Update]
    traces: dict[str, str]
    """Event id -> traceparent of the request that carried it, for the round's traced requests."""


def _trace_of(update: Update, traces: dict[str, str]) -> str:
    """The traceparent of the first of an update's events that came in a traced request."""
    if traces:
        for event_id in update.ids:
            found = traces.get(event_id)
            if found:
                return found
    return ""


class Detector:
    def __init__(
        self,
        cfg: DetectionConfig,
        redis_client: aioredis.Redis | None,
        alert_store: AlertStore | None,
        keyspace: str,
    ) -> None:
        self.cfg = cfg
        self._redis = redis_client
        self._state = CorrelationState(redis_client) if redis_client is not None else None
        self._store = alert_store
        self._channel = channel(keyspace)
        self._roles = RoleFile(cfg.roles_file) if cfg.roles_file else None
        self.rules = RuleSet()
        self._rules_signature: tuple[tuple[str, float, int], ...] | None = None
        # Batches with the traceparent of the request that carried them ("" when not traced): a new
        # alert carries its trigger's, so its delivery span joins that trace.
        self._pending: deque[tuple[Sequence[pb.Event], str]] = deque()
        self._urgent: deque[tuple[Sequence[pb.Event], str]] = deque()  # holding a P0 event: evaluated first
        self._pending_events = 0
        self._wake = asyncio.Event()
        self._urgent_queued = asyncio.Event()
        self._unsettled = 0  # rounds evaluated whose correlation call has not ended yet
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.counts = RunningCounts(
            self._state,
            self._publish,
            lambda alerts: self._deliver(alerts, []),
            redis_timeout_s=cfg.redis_timeout_s,
            store_every_s=cfg.store_updates_s,
        )
        self._unwritten: list[apb.Alert] = []  # delivered, waiting for the write in progress
        self._writing: asyncio.Task[None] | None = None
        self.webhook = (
            WebhookSender(
                cfg.webhook_url,
                cfg.webhook_secret.encode(),
                attempts=cfg.webhook_attempts,
                backoff_s=cfg.webhook_backoff_s,
                dead_letter=alert_store.dead_letter if alert_store is not None else None,
            )
            if cfg.webhook_url
            else None
        )
        self.evaluated = 0
        self.dropped = 0
        self.rounds = 0
        self.alerts_raised = 0
        self.alerts_updated = 0
        self.redis_errors = 0
        self.redis_retries = 0
        self.degraded_updates = 0
        self.publish_errors = 0
        self.store_errors = 0
        self.rule_errors = 0
        self.reloads = 0
        self.last_rule_error = ""
        self.round_us = Reservoir()

    @property
    def redis(self) -> aioredis.Redis | None:
        return self._redis

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.rules_dir)

    @property
    def queue_events(self) -> int:
        return self._pending_events

    def offer(self, events: Sequence[pb.Event], traceparent: str = "") -> None:
        """Queue a batch for evaluation; never blocks. Past the bound the batch is counted and skipped.
        ``traceparent``: the span of the request that carried it, when it is traced."""
        if not events or not self.enabled:
            return
        if self._pending_events + len(events) > self.cfg.max_pending_events:
            self.dropped += len(events)
            return
        urgent = any(ev.severity == pb.P0_CRITICAL for ev in events)
        (self._urgent if urgent else self._pending).append((events, traceparent))
        self._pending_events += len(events)
        self._wake.set()
        if urgent:
            self._urgent_queued.set()

    def load(self) -> bool:
        """Load the rule files when they changed; False (rules kept) when they do not parse."""
        root = Path(self.cfg.rules_dir)
        try:
            signature = tuple(
                sorted(
                    (str(p), p.stat().st_mtime, p.stat().st_size)
                    for p in root.rglob("*")
                    if p.suffix in (".yml", ".yaml")
                )
            )
        except OSError as exc:
            signature = (("", 0.0, hash(str(exc))),)
        if signature == self._rules_signature:
            return True
        self._rules_signature = signature
        try:
            rules = load_rules(root)
        except (RuleError, OSError) as exc:
            self.rule_errors += 1
            self.last_rule_error = str(exc)
            log.error("rules not loaded, the previous ones stay in force: %s", exc)
            return False
        if rules.digest != self.rules.digest:
            self.reloads += 1
            self.rules = rules
            log.info("rules loaded: %d detection, %d correlation", len(rules.detections), len(rules.correlations))
        return True

    def start(self) -> None:
        if not self.enabled:
            return
        self.load()
        if self._roles is not None:
            self._roles.refresh()
        self._tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._flush_updates()),
        ]

    async def shutdown(self) -> None:
        """Stop evaluating; alerts already raised finish storing. Safe twice and before start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._background:  # the last rounds' correlation calls, alerts on their way to the store
            # Long enough for a call that is being retried to use its last try.
            tries = self.cfg.redis_attempts
            retrying_s = self.cfg.redis_timeout_s * (2**tries - 1) + _RETRY_PAUSE_S * (2 ** (tries - 1) - 1)
            await asyncio.wait(self._background, timeout=max(5.0, retrying_s + 0.5))
        await self.counts.flush(final=True)
        if self._background:
            # The final alerts may wait behind a write in flight: the driver's request timeout each.
            await asyncio.wait(self._background, timeout=2 * REQUEST_TIMEOUT_S + 1)
        if self._unwritten or (self._writing is not None and not self._writing.done()):
            self.store_errors += 1
            log.warning("%d alerts not stored at shutdown", len(self._unwritten))
        if self.webhook is not None:
            await self.webhook.close()

    async def _flush_updates(self) -> None:
        while True:
            await asyncio.sleep(UPDATE_EVERY_S)
            try:
                await self.counts.flush()
            except Exception:  # one bad flush must not stop the running counts for good
                log.exception("open alerts' counts not flushed")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_s)
            self.load()
            if self._roles is not None:
                self._roles.refresh()

    async def _run(self) -> None:
        settling: asyncio.Task[None] | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._urgent or self._pending:
                # Batches holding P0 events make rounds of their own, ahead of the others: their
                # alerts are not held up by the evaluation of a bulk backlog.
                traces: dict[str, str] = {}
                events = self._take(self._urgent or self._pending, traces)
                try:
                    evaluated = await self._evaluate(events, traces)
                except Exception:  # a bug in one round must not stop detection for good
                    log.exception("detection round of %d events failed", len(events))
                    continue
                # This round's stateless alerts (P0) are out while earlier rounds' correlation calls
                # may still be in flight (retries included). The calls stay one at a time, in round
                # order: each round's call waits for the one before it. The next round is evaluated
                # once the previous call is done (so evaluation does not race ahead of Redis), or at
                # once when a batch holding a P0 event is waiting, within _MAX_UNSETTLED rounds.
                if settling is not None and not settling.done():
                    await self._until_settled_or_urgent(settling)
                self._unsettled += 1
                settling = self._background_task(self._settle_after(settling, evaluated))

    async def process(self, events: Sequence[pb.Event]) -> list[apb.Alert]:
        """One round: evaluate, publish the alerts of rules without state, update the shared state and
        publish what it raised, then store and deliver in the background. Every alert raised or updated."""
        return await self._settle(await self._evaluate(events), every=True)

    def _take(
        self, queue: deque[tuple[Sequence[pb.Event], str]], traces: dict[str, str], most: int = _ROUND_EVENTS
    ) -> list[pb.Event]:
        """Batches off the front of a queue, until they hold ``most`` events or more; the ids of the
        events of traced requests go into ``traces`` with their request's traceparent."""
        events: list[pb.Event] = []
        while queue and len(events) < most:
            batch, traceparent = queue.popleft()
            self._pending_events -= len(batch)
            events.extend(batch)
            if traceparent:
                traces.update(dict.fromkeys((ev.event_id for ev in batch), traceparent))
        return events

    async def _evaluate(self, events: Sequence[pb.Event], traces: dict[str, str] | None = None) -> _Round:
        """Evaluate a round and publish the alerts of rules without state at once (nothing slow first).
        Batches holding a P0 event that are queued while the round is evaluated join it at the next
        chunk (a chunk's worth at a time), and the alerts found so far go out then: a P0 alert
        waits for one chunk, not a round."""
        started = time.perf_counter()
        rules = self.rules
        result = Evaluation()
        raised: list[apb.Alert] = []
        traces = {} if traces is None else traces
        for i in range(0, len(events), _CHUNK):
            if i:
                await asyncio.sleep(0)
                if self._urgent:
                    urgent = self._take(self._urgent, traces, _CHUNK)
                    evaluate(rules, urgent, self._roles, into=result)
                    self.evaluated += len(urgent)
                    raised += await self._raise(result.hits[len(raised) :], traces)
            evaluate(rules, events[i : i + _CHUNK], self._roles, into=result)
        self.evaluated += len(events)
        self.rounds += 1
        raised += await self._raise(result.hits[len(raised) :], traces)
        return _Round(started, int(time.time() * 1000), raised, list(result.updates.values()), traces)

    async def _raise(self, hits: list[Hit], traces: dict[str, str]) -> list[apb.Alert]:
        """Alerts of rules without state: published at once, then stored and delivered."""
        if not hits:
            return []
        now_ms = int(time.time() * 1000)
        raised = [alert_of_hit(h, now_ms, traces.get(h.event.event_id, "")) for h in hits]
        await self._publish(raised)
        self.alerts_raised += len(raised)
        self._deliver(raised, raised)
        return raised

    async def _until_settled_or_urgent(self, settling: asyncio.Task[None]) -> None:
        """Wait for ``settling`` (not gather: cancelling this must not cancel it), but no longer than
        until a batch holding a P0 event is queued, unless too many rounds are unsettled already."""
        if self._unsettled >= _MAX_UNSETTLED:
            await asyncio.wait([settling])
            return
        if self._urgent:
            return
        self._urgent_queued.clear()
        urgent = asyncio.ensure_future(self._urgent_queued.wait())
        try:
            await asyncio.wait([settling, urgent], return_when=asyncio.FIRST_COMPLETED)
        finally:
            urgent.cancel()

    async def _settle_after(self, previous: asyncio.Task[None] | None, evaluated: _Round) -> None:
        """Settle a round once the round before it is settled: the correlation calls stay in order."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await self._settle_logged(evaluated)
        finally:
            self._unsettled -= 1

    async def _settle_logged(self, evaluated: _Round) -> None:
        try:
            await self._settle(evaluated)
        except Exception:
            log.exception("correlation of a detection round failed")

    async def _settle(self, evaluated: _Round, every: bool = False) -> list[apb.Alert]:
        """The round's correlation and suppression: one script call, then the alerts it opened published.
        Returns the alerts opened (with ``every``: and every open alert the round added to)."""
        raised = evaluated.raised
        if evaluated.updates:
            now_ms = evaluated.now_ms
            firings = await self._correlate(evaluated.updates, now_ms)
            opened = [
                alert_of_firing(firing, now_ms, _trace_of(firing.update, evaluated.traces))
                for firing in firings
                if firing.new
            ]
            for firing in firings:
                if not firing.new:
                    self.counts.moved(firing, now_ms)
            if opened:
                await self._publish(opened)
                self._deliver(opened, opened)
            if every:
                by_id = {alert.alert_id: alert for alert in opened}
                raised = raised + [by_id.get(f.alert_id) or alert_of_firing(f, now_ms) for f in firings]
            else:
                raised = raised + opened
            self.alerts_raised += len(opened)
            self.alerts_updated += len(firings) - len(opened)
        self.round_us.add(int((time.perf_counter() - evaluated.started) * 1e6))
        return raised

    def _background_task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _correlate(self, updates: list[Update], now_ms: int) -> list[Firing]:
        """The round's one script call, retried (the same round: see :mod:`.state`) when it fails or
        its answer does not come in time; an empty list when Redis stays unreachable."""
        if self._state is None:
            self.degraded_updates += len(updates)
            return []
        batch = self._state.prepare(updates)
        timeout = self.cfg.redis_timeout_s
        for attempt in range(self.cfg.redis_attempts):
            try:
                return await asyncio.wait_for(self._state.apply(batch, now_ms), timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                self.redis_errors += 1
                error = exc
            if attempt + 1 < self.cfg.redis_attempts:
                self.redis_retries += 1
                await asyncio.sleep(_RETRY_PAUSE_S * 2**attempt)
                timeout *= 2
        self.degraded_updates += len(updates)
        log.warning("correlation state not updated (%d groups lost): %s", len(updates), error)
        return []

    async def _publish(self, alerts: list[apb.Alert]) -> bool:
        """Whether Redis took them (True for none, or without Redis)."""
        if self._redis is None or not alerts:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for message in batch_messages(alerts):
                    pipe.publish(self._channel, message)
                await asyncio.wait_for(pipe.execute(), self.cfg.redis_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self.publish_errors += 1
            log.warning("%d alerts not published: %s", len(alerts), exc)
            return False
        return True

    def _deliver(self, alerts: list[apb.Alert], new: list[apb.Alert]) -> None:
        """Store every alert (an update rewrites its rows); page only for new ones."""
        if self._store is not None and alerts:
            self._unwritten += alerts
            if self._writing is None or self._writing.done():
                self._writing = self._background_task(self._write())
        if self.webhook is not None:
            for alert in new:
                self.webhook.send(alert)

    async def _write(self) -> None:
        """Store the alerts delivered so far, then those delivered meanwhile, until none are left:
        one write at a time, so a later version of an alert is never overtaken by an earlier one,
        and alerts that arrive during a write, or during the ``store_linger_s`` before it, go
        together in one (group commit)."""
        assert self._store is not None
        while self._unwritten:
            if self.cfg.store_linger_s:
                await asyncio.sleep(self.cfg.store_linger_s)
            alerts, self._unwritten = self._unwritten, []
            try:
                await self._store.put(alerts)
            except Exception as exc:
                self.store_errors += 1
                log.warning("%d alerts not stored: %s", len(alerts), exc)

    def stats(self) -> dict[str, Any]:
        return {
            "detection": {
                "enabled": self.enabled,
                "rules": len(self.rules.detections) + len(self.rules.correlations),
                "evaluated": self.evaluated,
                "queue_events": self._pending_events,
                "dropped": self.dropped,
                "alerts_raised": self.alerts_raised,
                "alerts_updated": self.alerts_updated,
                "updates_deferred": self.counts.deferred,
                "redis_errors": self.redis_errors,
                "redis_retries": self.redis_retries,
                "degraded_updates": self.degraded_updates,
                "publish_errors": self.publish_errors,
                "store_errors": self.store_errors,
                "rule_errors": self.rule_errors,
                "reloads": self.reloads,
                "last_rule_error": self.last_rule_error,
                "round_us": self.round_us.summary(),
                "webhook_latency_ms": self.webhook.latency_summary() if self.webhook else {},
                "webhook": {
                    "delivered": self.webhook.delivered if self.webhook else 0,
                    "retries": self.webhook.retries if self.webhook else 0,
                    "dead": self.webhook.dead if self.webhook else 0,
                },
            }
        }
