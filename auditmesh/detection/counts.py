"""The running counts of a processor's open alerts: collected from its rounds, published once a
second by one of the processors that counted them, stored every ``store_updates_s``.

An attack of thousands of events a second moves its alert's count in every round of every
processor that sees its events. Each processor keeps the latest count it saw per alert and, once
a second, claims the moved ones in Redis (:meth:`.state.CorrelationState.claim_updates`): a count
already out is dropped, a newer count claimed too soon waits for the next flush, and the counts
it wins go out with the values Redis holds (what every processor counted). A count claimed and
not published (the ``PUBLISH`` failed, or the flush was cancelled at shutdown) is owed: this
processor sends it at its next flush unless the count has moved on meanwhile, since no other
processor will. Counts are stored less often, re-read from Redis first, so whichever processor
stores last stores the latest count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from auditmesh.detection.alerts import alert_of_firing
from auditmesh.detection.state import LATER, SENT, CorrelationState, Firing
from auditpb.v1 import alerts_pb2 as apb

__all__ = ["CLAIM_EVERY_MS", "UPDATE_EVERY_S", "RunningCounts"]

log = logging.getLogger("auditmesh.detection")

UPDATE_EVERY_S = 1.0
"""How often the running counts of open alerts are re-published: an attack of thousands of events
a second costs one update per alert per second, not one per round. They are re-stored less often
(``DetectionConfig.store_updates_s``)."""
CLAIM_EVERY_MS = int(UPDATE_EVERY_S * 900)
"""Least time between two publications of an alert's count, a little under the flush interval so
that a processor whose flushes drift late still wins its claims."""

Entry = tuple[Firing, int]
"""An open alert's latest firing and the time (ms) of the round that counted it."""


class RunningCounts:
    """One processor's moved counts: what to publish at the next flush, what to store, what it owes.

    ``publish`` sends alerts and says whether Redis took them; ``deliver`` hands alerts to the
    alert store."""

    def __init__(
        self,
        state: CorrelationState | None,
        publish: Callable[[list[apb.Alert]], Awaitable[bool]],
        deliver: Callable[[list[apb.Alert]], None],
        *,
        redis_timeout_s: float,
        store_every_s: float,
    ) -> None:
        self._state = state
        self.publish = publish
        self._deliver = deliver
        self._timeout_s = redis_timeout_s
        self._store_every_s = store_every_s
        # Open alerts whose count moved, by id, with the round's time: flushed every second.
        self._updated: dict[str, Entry] = {}
        # Open alerts whose count moved since they were last stored, by id: stored every store_updates_s.
        self._unstored: dict[str, Entry] = {}
        # Open alerts whose count this processor may have claimed and not published, by id: the count.
        self._owed: dict[str, int] = {}
        self._stored_at = time.monotonic()
        self.deferred = 0  # counts left to another processor's publication or the next flush

    def moved(self, firing: Firing, now_ms: int) -> None:
        """An open alert's count moved in a round (the latest round's wins)."""
        self._updated[firing.alert_id] = (firing, now_ms)

    async def flush(self, final: bool = False) -> None:
        """Publish the latest version of every alert whose count moved since the last flush and whose
        claim this processor wins (the others wait for the next flush, or are out already); every
        ``store_every_s`` (and when ``final``) store the latest version of each one moved since it
        was last stored."""
        if self._updated:
            moved = self._updated
            self._unstored.update(moved)
            self._updated = {}
            try:
                claimed = await self._claimed(moved, final)
                published = await self.publish([alert for _, alert in claimed])
            except BaseException:
                # Cancelled (shutdown) between a claim and its publication: the claim may be
                # recorded, so what moved is owed, and the final flush sends it.
                self._owe(moved)
                raise
            if published:
                for alert_id, _ in claimed:
                    self._owed.pop(alert_id, None)
            else:  # claimed, not published: no other processor will send these counts
                self._owe({alert_id: moved[alert_id] for alert_id, _ in claimed})
        now = time.monotonic()
        if self._unstored and (final or now - self._stored_at >= self._store_every_s):
            self._stored_at = now
            due = dict(self._unstored)
            alerts, fresh = await self._latest(list(due.values()))
            if not fresh and not final:
                return  # kept for the next tick: a count not re-read could undo a higher one stored
            for alert_id, entry in due.items():  # those that moved again meanwhile stay due
                if self._unstored.get(alert_id) is entry:
                    del self._unstored[alert_id]
            self._deliver(alerts)

    def _owe(self, entries: dict[str, Entry]) -> None:
        """Counts this processor may have claimed without publishing them: sent at the next flush
        even though their claim is recorded (unless another processor has sent a higher one)."""
        for alert_id, entry in entries.items():
            self._updated.setdefault(alert_id, entry)
            self._owed[alert_id] = max(self._owed.get(alert_id, 0), entry[0].count)

    async def _claimed(self, moved: dict[str, Entry], final: bool) -> list[tuple[str, apb.Alert]]:
        """The moved alerts this processor publishes now, by id, with their counts as they are in
        Redis: those whose claim it wins (see :mod:`.state`) and those it claimed before without
        publishing them; those claimed too soon wait for the next flush (unless ``final``: then and
        when Redis does not answer, every one goes out as counted)."""
        if self._state is None:
            return [(alert_id, alert_of_firing(*entry)) for alert_id, entry in moved.items()]
        try:
            verdicts = await asyncio.wait_for(
                self._state.claim_updates([f for f, _ in moved.values()], CLAIM_EVERY_MS), self._timeout_s
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("open alerts' counts not re-read (sent as counted): %s", exc)
            return [(alert_id, alert_of_firing(*entry)) for alert_id, entry in moved.items()]
        out: list[tuple[str, apb.Alert]] = []
        for (alert_id, entry), verdict in zip(moved.items(), verdicts, strict=True):
            if verdict == SENT:
                owed = self._owed.get(alert_id)
                if owed is None or not (final or entry[0].count <= owed):
                    self._owed.pop(alert_id, None)  # out already, this count or a higher one
                    continue
            elif verdict == LATER and not final:
                self._updated.setdefault(alert_id, entry)  # unless a newer round moved it meanwhile
                self.deferred += 1
                continue
            out.append((alert_id, alert_of_firing(*entry)))
        return out

    async def _latest(self, moved: list[Entry]) -> tuple[list[apb.Alert], bool]:
        """The alerts with their counts as they are in Redis now, and whether Redis answered:
        another processor may have counted more of the same alert since this one's last round,
        and flush after it, so whichever processor sends or stores last sends the latest count."""
        fresh = True
        if self._state is not None:
            try:
                await asyncio.wait_for(self._state.refresh_counts([f for f, _ in moved]), self._timeout_s)
            except (RedisError, OSError, TimeoutError) as exc:
                fresh = False
                log.warning("open alerts' counts not re-read (sent as counted): %s", exc)
        return [alert_of_firing(firing, now_ms) for firing, now_ms in moved], fresh
