"""A load whose rate can change while it runs, through one AuditClient, and a check through
Search that every event it logged is stored exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc


@dataclass
class StepLoad:
    target: str
    rate: float = 50.0
    weddings: int = 4
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.wedding_ids = [f"scale-{self.run}-{i}" for i in range(self.weddings)]
        self.logged: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.client = AuditClient(self.target, source_service="scaling", batch_size=200, linger_ms=10)

    def start(self) -> StepLoad:
        self._thread.start()
        return self

    def _loop(self) -> None:
        credit = 0.0
        last = time.monotonic()
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            credit = min(credit + (now - last) * self.rate, self.rate)  # no burst after a rate change
            last = now
            while credit >= 1:
                self.logged.append(
                    self.client.log(
                        "guestlist.viewed",
                        user_id=f"u-{self.run}-{n % 13}",
                        organization_id="org",
                        wedding_id=self.wedding_ids[n % self.weddings],
                        severity=pb.P2_MEDIUM,
                    )
                )
                credit -= 1
                n += 1
            time.sleep(0.005)

    def stop(self, flush_timeout: float = 120.0) -> None:
        self._stop.set()
        self._thread.join()
        flushed = self.client.flush(flush_timeout)
        stats = self.client.stats
        self.client.close(10)
        assert flushed, f"events left unacknowledged: {stats}"
        assert stats.acked == len(self.logged), stats


def stored_counts(layout: MeshLayout, wedding_ids: list[str]) -> Counter[str]:
    """How many times Search returns each event of these weddings."""
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for wedding in wedding_ids:
            token = ""
            while True:
                req = pb.SearchRequest(wedding_id=wedding, page_size=1000, page_token=token, max_pages=100)
                pages = list(stub.Search(req, timeout=30))
                for page in pages:
                    seen.update(ev.event_id for ev in page.events)
                token = pages[-1].next_page_token
                if not token:
                    break
    return seen
