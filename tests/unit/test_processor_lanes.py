"""The processor writes each lane through a committer with slots of its own: a wedding-day
request is written and answered while every bulk write slot is held, and it writes on the
store's urgent connections. A stand-in store (a pure unit of the servicer's lane routing; the
e2e tests in tests/e2e/test_lanes.py run the real services)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from auditmesh.store import WriteStats
from auditpb.v1 import audit_pb2 as pb
from services.processor.servicer import ProcessorServicer


class HeldStore:
    """Bulk writes (not urgent) wait until ``release`` is set; urgent writes go through."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.writes: list[tuple[bool, list[str]]] = []

    async def write(self, events: Iterable[pb.Event], *, urgent: bool = False) -> WriteStats:
        ids = [ev.event_id for ev in events]
        self.writes.append((urgent, ids))
        if not urgent:
            await self.release.wait()
        return WriteStats(partitions=[])


class NoVersions:
    async def bump(self, partitions: Iterable[tuple[str, str, int]]) -> None:
        return None


def test_a_wedding_day_request_is_written_while_every_bulk_slot_is_held() -> None:
    """With the one bulk write slot held and another bulk request queued behind it, a
    wedding-day request is answered ok at once, written urgent, and the bulk ones only later."""

    async def go() -> None:
        store = HeldStore()
        servicer = ProcessorServicer(store, NoVersions(), max_writes=1, critical_writes=1, wedding_day_writes=1)  # type: ignore[arg-type]

        def req(lane: int, seq: int, event_id: str) -> pb.ProcessRequest:
            return pb.ProcessRequest(seq=seq, lane=lane, events=[pb.Event(event_id=event_id)])  # type: ignore[arg-type]

        bulk = [asyncio.create_task(servicer._write(req(pb.LANE_NORMAL, n, f"bulk-{n}"))) for n in (1, 2)]
        await asyncio.sleep(0.05)
        wedding_day = await asyncio.wait_for(servicer._write(req(pb.LANE_WEDDING_DAY, 3, "today")), 5)
        assert wedding_day.ok and wedding_day.seq == 3
        assert not any(task.done() for task in bulk), "the bulk requests were answered before their write"
        assert (True, ["today"]) in store.writes
        store.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*bulk), 5)
        assert all(a.ok for a in answers)

    asyncio.run(go())
