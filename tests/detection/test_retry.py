"""A correlation round whose Redis call is lost is retried, not dropped: counts stay exact and an
alert opened by a call whose answer was lost is still raised once, as new.

The faults are real network faults: the detector talks to the real Redis through a TCP relay that
can cut the connection when it sees the next script call, either before passing it on (the call
never ran) or after passing it on, in place of the answer (the call ran, the answer is lost).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from auditmesh.config import StoreConfig
from auditmesh.detection import counts as counts_module
from auditmesh.detection import detector as detector_module
from auditmesh.detection.alerts import AlertStore, alerts_of_message, channel
from auditmesh.detection.config import DetectionConfig
from auditmesh.detection.detector import Detector
from auditmesh.detection.state import _STATE_LUA
from auditmesh.store import EventStore
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb
from tests.detection.conftest import PACK, event

T0 = int(time.time() * 1000) - 60_000


class Relay:
    """A TCP relay to Redis that loses the next script call (``cut = "call"``) or its answer
    (``cut = "answer"``) by closing the caller's connection, or holds script calls back while
    ``hold`` is set (``held`` says one is waiting)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.cut = ""
        self.cuts = 0
        self.hold = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        lose_answer = asyncio.Event()

        async def to_redis() -> None:
            while data := await reader.read(65536):
                if self.cut and b"EVALSHA" in data:
                    cut, self.cut = self.cut, ""
                    self.cuts += 1
                    if cut == "call":
                        writer.close()
                        return
                    lose_answer.set()
                if self.hold and b"EVALSHA" in data:
                    self.held.set()
                    await self.release.wait()
                up_writer.write(data)
                await up_writer.drain()

        async def to_caller() -> None:
            while data := await up_reader.read(65536):
                if lose_answer.is_set():
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(to_redis(), to_caller())
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the caller's connection was cut, or the test is over
        finally:
            writer.close()
            up_writer.close()


def failures(n: int, user: str, start: int) -> list[pb.Event]:
    return [
        event("auth.login.failed", at_ms=T0 + i, user_id=user, source_ip="203.0.113.9", outcome=pb.OUTCOME_FAILURE)
        for i in range(start, start + n)
    ]


def brute_force(alerts: list[apb.Alert]) -> list[apb.Alert]:
    return [a for a in alerts if a.rule == "brute_force_user"]


async def published_counts(pubsub: Any, seconds: float) -> list[int]:
    """The counts of the brute_force_user alerts that reach ``pubsub`` within ``seconds``."""
    counts: list[int] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        message = await pubsub.get_message(timeout=0.1)
        if message is not None:
            counts += [a.count for a in brute_force(alerts_of_message(message["data"]))]
    return counts


def test_a_lost_call_or_a_lost_answer_is_retried_and_counts_stay_exact(state_db: str) -> None:
    """A first round whose answer is lost (the call ran) still raises its alert once, as new; a
    second whose call is lost (it never ran) is sent again, and the alert's count is every event's."""
    url = urlparse(state_db)
    redis.Redis.from_url(state_db).script_load(_STATE_LUA)  # so the first call runs the script itself

    async def go() -> tuple[list[apb.Alert], int, list[apb.Alert], Detector, int]:
        relay = Relay(url.port or 6379)
        port = await relay.start()
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}{url.path}")
        detector = Detector(DetectionConfig(rules_dir=str(PACK), redis_timeout_s=10.0), client, None, "ks")
        detector.load()
        try:
            relay.cut = "answer"
            first = await detector.process(failures(10, "u-retry", 0))
            opened = detector.alerts_raised
            relay.cut = "call"
            second = await detector.process(failures(990, "u-retry", 10))
        finally:
            await client.aclose()
            await relay.close()
        return first, opened, second, detector, relay.cuts

    first, opened, second, detector, cuts = asyncio.run(go())
    assert cuts == 2 and detector.redis_retries == 2 and detector.degraded_updates == 0
    assert [(a.count, a.group) for a in brute_force(first)] == [(10, "user_id=u-retry")]
    assert opened == 1  # raised as new by the round whose answer was lost
    assert [a.count for a in brute_force(second)] == [1000]
    assert brute_force(second)[0].alert_id == brute_force(first)[0].alert_id
    assert detector.alerts_raised == 2  # and brute_force_ip once, at the second round's 1,000 from one address


TEMPORAL = (
    "title: a\nname: mfa_off\nlogsource:\n  product: auditmesh\nlevel: low\n"
    "detection:\n  s:\n    event_type: auth.mfa.disabled\n  condition: s\n---\n"
    "title: b\nname: payout_changed\nlogsource:\n  product: auditmesh\nlevel: low\n"
    "detection:\n  s:\n    event_type: payment.payout.changed\n  condition: s\n---\n"
    "title: t\nname: mfa_and_payout\nlevel: critical\ncorrelation:\n  type: temporal\n"
    "  rules: [mfa_off, payout_changed]\n  group-by: [user_id]\n  timespan: 10m\n"
)


def test_a_correlation_without_suppression_that_fired_in_a_lost_answer_fires_on_the_retry(
    state_db: str, tmp_path: Path
) -> None:
    """A correlation with no suppression window starts afresh when it fires; if the answer of the call
    that fired is lost, the retry still reports that firing (once) rather than an emptied window."""
    (tmp_path / "t.yml").write_text(TEMPORAL)
    url = urlparse(state_db)
    redis.Redis.from_url(state_db).script_load(_STATE_LUA)

    async def go() -> tuple[list[apb.Alert], Detector]:
        relay = Relay(url.port or 6379)
        port = await relay.start()
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}{url.path}")
        detector = Detector(DetectionConfig(rules_dir=str(tmp_path), redis_timeout_s=10.0), client, None, "ks")
        detector.load()
        try:
            assert await detector.process([event("auth.mfa.disabled", at_ms=T0, user_id="u-t")]) == []
            relay.cut = "answer"
            alerts = await detector.process([event("payment.payout.changed", at_ms=T0 + 1000, user_id="u-t")])
        finally:
            await client.aclose()
            await relay.close()
        return alerts, detector

    alerts, detector = asyncio.run(go())
    assert detector.redis_retries == 1
    assert [(a.rule, a.group) for a in alerts] == [("mfa_and_payout", "user_id=u-t")]
    assert detector.alerts_raised == 1


def test_p0_alerts_go_out_while_an_earlier_rounds_correlation_call_is_held(state_db: str) -> None:
    """The alerts of P0 events are published while an earlier round's correlation call is still
    waiting on Redis (a slow call or its retries never hold up the stateless alerts): the first P0
    batch after the held round, and the next one too. The held call's alert follows once Redis
    answers."""
    url = urlparse(state_db)
    keyspace = f"ks_{uuid.uuid4().hex[:8]}"

    async def go() -> list[tuple[str, bool]]:
        relay = Relay(url.port or 6379)
        port = await relay.start()
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}{url.path}")
        listener = redis.asyncio.Redis.from_url(state_db)
        detector = Detector(DetectionConfig(rules_dir=str(PACK), redis_timeout_s=30.0), client, None, keyspace)
        seen: list[tuple[str, bool]] = []
        try:
            async with listener.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel(keyspace))
                relay.hold = True
                detector.start()
                detector.offer(failures(10, "u-held", 0))
                await asyncio.wait_for(relay.held.wait(), 30)
                detector.offer([event("auth.account.locked", severity=pb.P0_CRITICAL, user_id="u-p0")])
                deadline = time.monotonic() + 60
                while len(seen) < 3 and time.monotonic() < deadline:
                    message = await pubsub.get_message(timeout=1)  # None also for the subscription's own
                    if message is None:
                        continue
                    seen += [(a.rule, relay.release.is_set()) for a in alerts_of_message(message["data"])]
                    if len(seen) == 1:
                        detector.offer([event("auth.account.locked", severity=pb.P0_CRITICAL, user_id="u-p0b")])
                    else:
                        relay.release.set()
        finally:
            relay.release.set()
            await detector.shutdown()
            await client.aclose()
            await listener.aclose()
            await relay.close()
        return seen

    assert asyncio.run(go()) == [("p0_event", False), ("p0_event", False), ("brute_force_user", True)]


def test_a_p0_batch_queued_while_a_round_is_evaluated_joins_it_at_the_next_chunk(
    state_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding a P0 event that arrives while a bulk round of 5,000 events is being evaluated
    does not wait for the round: it is evaluated at the round's next chunk and its alert is
    published then (after two calls of ``evaluate``: the first chunk, then the P0 batch), once."""
    keyspace = f"ks_{uuid.uuid4().hex[:8]}"
    chunks = 0
    real_evaluate = detector_module.evaluate

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal chunks
        chunks += 1
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(detector_module, "evaluate", counted)

    async def go() -> tuple[list[tuple[int, list[str]]], list[str], int]:
        client = redis.asyncio.Redis.from_url(state_db)
        detector = Detector(DetectionConfig(rules_dir=str(PACK)), client, None, keyspace)
        detector.load()
        publish = detector._publish
        published: list[tuple[int, list[str]]] = []  # (evaluate calls so far, rules) per publish

        async def recorded(alerts: list[apb.Alert]) -> bool:
            published.append((chunks, [a.rule for a in alerts]))
            return await publish(alerts)

        detector._publish = recorded  # type: ignore[method-assign]
        bulk = [event("guestlist.viewed", user_id=f"u-bulk-{k % 50}") for k in range(5000)]
        received: list[str] = []
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel(keyspace))
                round_task = asyncio.create_task(detector._evaluate(bulk))
                await asyncio.sleep(0)  # the round evaluates its first chunk, then yields
                detector.offer([event("auth.account.locked", severity=pb.P0_CRITICAL, user_id="u-p0-mid")])
                await round_task
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:  # every message, to see a second one if there is
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None:
                        received += [a.rule for a in alerts_of_message(message["data"])]
        finally:
            await client.aclose()
        return published, received, detector.queue_events

    published, received, still_queued = asyncio.run(go())
    assert published == [(2, ["p0_event"])] and received == ["p0_event"], (published, received)
    assert still_queued == 0


def test_running_counts_are_stored_every_store_updates_s_and_at_shutdown(
    store_config: StoreConfig, state_db: str
) -> None:
    """An open alert is stored when it opens; its running count is published at every flush but
    stored only once ``store_updates_s`` has passed, and at shutdown whatever moved since."""
    user = f"u-st-{uuid.uuid4().hex[:6]}"

    async def go() -> list[int]:
        store = EventStore.connect(store_config)
        client = redis.asyncio.Redis.from_url(state_db)
        alerts = AlertStore(store.session, store_config.keyspace, store_config.max_batch_bytes)
        cfg = DetectionConfig(rules_dir=str(PACK), store_updates_s=3600)
        detector = Detector(cfg, client, alerts, f"ks_{uuid.uuid4().hex[:8]}")
        detector.load()

        async def stored() -> int:
            if detector._background:
                await asyncio.wait(detector._background)
            page = await alerts.list(apb.AlertFilter(rule="brute_force_user"), page_size=1000)
            mine = [a.count for a in page.alerts if a.group == f"user_id={user}"]
            assert len(mine) <= 1, mine
            return mine[0] if mine else 0

        counts: list[int] = []
        try:
            await detector.process(failures(10, user, 0))  # opens the alert: stored at once
            counts.append(await stored())
            await detector.process(failures(90, user, 10))
            await detector.counts.flush()  # published; stored only an hour after the last store
            counts.append(await stored())
            await detector.shutdown()  # stores what moved
            counts.append(await stored())
        finally:
            await client.aclose()
            store.close()
        return counts

    assert asyncio.run(go()) == [10, 10, 100]


def test_alerts_delivered_within_the_store_linger_go_to_cassandra_in_one_write(
    store_config: StoreConfig, state_db: str
) -> None:
    """The P0 alerts of three rounds delivered within ``store_linger_s`` are stored by one write
    (a write costs the processor the same whatever its size), and every one of them is stored."""
    run = uuid.uuid4().hex[:6]

    async def go() -> tuple[list[int], list[str]]:
        store = EventStore.connect(store_config)
        client = redis.asyncio.Redis.from_url(state_db)
        alerts = AlertStore(store.session, store_config.keyspace, store_config.max_batch_bytes)
        writes: list[int] = []
        write = alerts.put

        async def counted(batch: list[apb.Alert]) -> None:  # the real store writes them
            writes.append(len(batch))
            await write(batch)

        alerts.put = counted  # type: ignore[method-assign,assignment]
        cfg = DetectionConfig(rules_dir=str(PACK), store_linger_s=0.5)
        detector = Detector(cfg, client, alerts, f"ks_{uuid.uuid4().hex[:8]}")
        detector.load()
        try:
            for k in range(3):
                await detector.process([event("auth.account.locked", user_id=f"u-{run}-{k}", severity=pb.P0_CRITICAL)])
            await asyncio.wait(detector._background)
            page = await alerts.list(apb.AlertFilter(rule="p0_event"), page_size=1000)
        finally:
            await client.aclose()
            store.close()
        return writes, sorted(a.user_id for a in page.alerts if a.user_id.startswith(f"u-{run}-"))

    writes, stored = asyncio.run(go())
    assert writes == [3]
    assert stored == [f"u-{run}-{k}" for k in range(3)]


def test_an_open_alert_goes_out_once_a_second_with_its_latest_count_whichever_processor_counted_it(
    state_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processors count one brute force. Each count goes out once: the processor that flushes
    first publishes the count both made (re-read from Redis), the other's flush sends nothing; a
    count claimed within a second of the last publication waits for the next flush, and then goes
    out from the processor that counted it even when the other counts no more."""
    # Claims 2.5 s apart instead of 0.9 s: a "too soon" claim stays too soon on a slow host.
    monkeypatch.setattr(counts_module, "CLAIM_EVERY_MS", 2500)
    keyspace = f"ks_{uuid.uuid4().hex[:8]}"

    async def go() -> list[tuple[str, int]]:
        clients = [redis.asyncio.Redis.from_url(state_db) for _ in range(3)]
        first, second = (Detector(DetectionConfig(rules_dir=str(PACK)), c, None, keyspace) for c in clients[:2])
        first.load()
        second.load()
        published: list[tuple[str, int]] = []
        try:
            async with clients[2].pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel(keyspace))

                async def take(label: str) -> None:
                    """What was published since the last take (what reaches the subscriber in 0.3 s)."""
                    published.extend((label, count) for count in await published_counts(pubsub, 0.3))

                await first.process(failures(10, "u-two", 0))  # opens the alert: published at once
                await take("opened")
                await asyncio.sleep(2.6)  # a claim's interval after the opening: the next count may go out
                await first.process(failures(90, "u-two", 10))  # 100
                await second.process(failures(100, "u-two", 100))  # 200
                await second.counts.flush()  # publishes 200
                await first.counts.flush()  # 200 is out already: nothing
                await take("first flushes")
                await first.process(failures(50, "u-two", 200))  # 250, claimed too soon after 200
                deferred = first.counts.deferred
                await first.counts.flush()
                await take("too soon")
                assert first.counts.deferred > deferred
                await asyncio.sleep(2.6)
                await second.counts.flush()  # nothing moved on the second processor: nothing to send
                await first.counts.flush()  # the deferred 250 goes out now
                await take("next flush")
                await first.counts.flush()
                await take("nothing left")
        finally:
            for c in clients:
                await c.aclose()
        return published

    assert asyncio.run(go()) == [("opened", 10), ("first flushes", 200), ("next flush", 250)]


def test_a_count_claimed_but_not_published_goes_out_at_the_next_flush(state_db: str) -> None:
    """A processor whose publication of a claimed count fails sends that count at its next flush:
    the claim is recorded, so no other processor would, and the attack's last count would never
    reach a subscriber."""
    keyspace = f"ks_{uuid.uuid4().hex[:8]}"

    async def go() -> list[int]:
        clients = [redis.asyncio.Redis.from_url(state_db) for _ in range(2)]
        detector = Detector(DetectionConfig(rules_dir=str(PACK)), clients[0], None, keyspace)
        detector.load()
        counts: list[int] = []
        try:
            async with clients[1].pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel(keyspace))
                await detector.process(failures(10, "u-owed", 0))  # opens the alert
                await asyncio.sleep(1.0)
                await detector.process(failures(90, "u-owed", 10))  # 100
                publish = detector.counts.publish

                async def lost(alerts: list[apb.Alert]) -> bool:
                    return False

                detector.counts.publish = lost
                await detector.counts.flush()  # 100 claimed, its publication lost
                detector.counts.publish = publish
                await detector.counts.flush()
                counts += await published_counts(pubsub, 1.0)
        finally:
            for c in clients:
                await c.aclose()
        return counts

    assert asyncio.run(go()) == [10, 100]
