"""A SubscribeAlerts caller's queue: new alerts go out before updates of open ones, an open alert's
updates are coalesced to its latest count, and the bounds drop the oldest (counted)."""

from __future__ import annotations

import asyncio

from auditmesh.detection.alerts import PUBLISH_BATCH, batch_messages
from auditmesh.detection.feed import Subscription, is_update
from auditpb.v1 import alerts_pb2 as apb


def alert(alert_id: str, count: int = 1, created_ms: int = 1_000, updated_ms: int | None = None) -> apb.Alert:
    a = apb.Alert(alert_id=alert_id, count=count)
    a.created_at.FromMilliseconds(created_ms)
    a.updated_at.FromMilliseconds(created_ms if updated_ms is None else updated_ms)
    return a


def drain(s: Subscription) -> list[tuple[str, int]]:
    async def take() -> list[tuple[str, int]]:
        out = []
        while len(s):
            a = await s.get()
            out.append((a.alert_id, a.count))
        return out

    return asyncio.run(take())


def test_an_update_is_a_later_version() -> None:
    assert not is_update(alert("a"))
    assert is_update(alert("a", 5, updated_ms=2_000))


def test_new_alerts_pass_a_burst_of_updates() -> None:
    s = Subscription()
    for i in range(300):  # one processor's once-a-second burst of running counts
        s.put(alert(f"open-{i}", 10 + i, updated_ms=2_000))
    s.put(alert("new-1"))
    s.put(alert("new-2"))
    out = drain(s)
    assert out[:2] == [("new-1", 1), ("new-2", 1)]
    assert len(out) == 302


def test_updates_of_one_alert_coalesce_to_the_latest_in_its_place() -> None:
    s = Subscription()
    s.put(alert("a", 11, updated_ms=2_000))
    s.put(alert("b", 20, updated_ms=2_000))
    s.put(alert("a", 12, updated_ms=3_000))
    s.put(alert("a", 13, updated_ms=4_000))
    s.put(alert("a", 12, updated_ms=4_000))  # another processor's older count, arriving late
    assert drain(s) == [("a", 13), ("b", 20)]
    assert s.coalesced == 3 and s.dropped == 0


def test_bounds_drop_the_oldest_and_count_them() -> None:
    s = Subscription(bound=3)
    for i in range(5):
        s.put(alert(f"n{i}"))
    for i in range(4):
        s.put(alert(f"u{i}", 2, updated_ms=2_000))
    assert drain(s) == [("n2", 1), ("n3", 1), ("n4", 1), ("u1", 2), ("u2", 2), ("u3", 2)]
    assert s.dropped == 3


def test_a_waiting_caller_wakes_for_an_alert() -> None:
    async def scenario() -> str:
        s = Subscription()
        waiting = asyncio.create_task(s.get())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        s.put(alert("late"))
        return (await asyncio.wait_for(waiting, 1.0)).alert_id

    assert asyncio.run(scenario()) == "late"


def test_alerts_go_out_in_batches_of_a_bounded_size() -> None:
    alerts = [alert(f"a{i}") for i in range(2 * PUBLISH_BATCH + 50)]
    messages = batch_messages(alerts)
    assert [len(apb.AlertBatch.FromString(m).alerts) for m in messages] == [PUBLISH_BATCH, PUBLISH_BATCH, 50]
    assert [a for m in messages for a in apb.AlertBatch.FromString(m).alerts] == alerts
    assert batch_messages([]) == []
