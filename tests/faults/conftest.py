"""Fault-test fixtures: a mesh of its own (three processors) that the tests may kill, a steady
SDK load whose every event is checked afterwards, and the record behind the README's
"faults survived" table (bench/results/faults-latest.json)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import TEST_KEYSPACE, slot_port, slot_redis_url

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults-latest.json"
_records: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def fault_layout(store_config: object) -> MeshLayout:
    return MeshLayout(
        ingest_port=slot_port(24051),
        processor_base_port=slot_port(24061),
        processors=3,
        query_port=slot_port(24071),
        keyspace=TEST_KEYSPACE,
        extra_env={
            "AUDITMESH_TOKEN_KEY": "fault-key",
            "AUDITMESH_REDIS_URL": slot_redis_url(14),
            "AUDITMESH_PROCESSOR_TIMEOUT_S": "5",
        },
    )


@pytest.fixture(scope="session")
def fault_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Supervisor:
    return Supervisor(Path(tmp_path_factory.mktemp("faults")))


@pytest.fixture(scope="session")
def fault_mesh(fault_layout: MeshLayout, fault_supervisor: Supervisor) -> Iterator[MeshLayout]:
    try:
        fault_layout.start(fault_supervisor)
        yield fault_layout
    finally:
        fault_layout.stop(fault_supervisor)
    if _records:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps({"run": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "faults": _records}, indent=2)
        )


@pytest.fixture()
def healthy_mesh(fault_mesh: MeshLayout, fault_supervisor: Supervisor) -> MeshLayout:
    """Every service of the fault mesh running (a previous test may have left one stopped)."""
    fault_mesh.start(fault_supervisor)
    return fault_mesh


@dataclass
class SteadyLoad:
    """A thread logging ``rate`` events/s through one AuditClient into a few fresh weddings."""

    target: str
    rate: float = 1500.0
    weddings: int = 8
    p0_every: int = 50
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    logged: dict[str, list[str]] = field(default_factory=dict)
    client: AuditClient | None = None

    def __post_init__(self) -> None:
        self.wedding_ids = [f"fault-{self.run}-{i}" for i in range(self.weddings)]
        self.logged = {w: [] for w in self.wedding_ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.peak_rss: dict[str, int] = {}

    def start(self) -> SteadyLoad:
        self.client = AuditClient(self.target, source_service="faults", batch_size=200, linger_ms=10)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self.client is not None
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            if n >= (time.monotonic() - started) * self.rate:
                time.sleep(0.002)
                continue
            wedding = self.wedding_ids[n % len(self.wedding_ids)]
            severity = pb.P0_CRITICAL if n % self.p0_every == 0 else pb.P2_MEDIUM
            self.logged[wedding].append(
                self.client.log(
                    "guestlist.viewed",
                    user_id=f"u-{self.run}-{n % 17}",
                    organization_id="org",
                    wedding_id=wedding,
                    severity=severity,
                )
            )
            n += 1

    @property
    def acked(self) -> int:
        assert self.client is not None
        return self.client.stats.acked

    def wait_for_progress(self, timeout: float = 90.0) -> float:
        """Seconds until the acknowledged count grows again (the recovery time)."""
        started = time.monotonic()
        base = self.acked
        while self.acked <= base:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"no event acknowledged for {timeout}s after the fault")
            time.sleep(0.02)
        return time.monotonic() - started

    def sample_rss(self, supervisor: Supervisor, layout: MeshLayout) -> None:
        for proc in layout.services():
            pid = supervisor.pid(proc.name)
            if pid:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak_rss[proc.name] = max(self.peak_rss.get(proc.name, 0), rss)

    def stop(self, flush_timeout: float = 120.0) -> Any:
        self._stop.set()
        self._thread.join()
        assert self.client is not None
        flushed = self.client.flush(flush_timeout)
        stats = self.client.stats
        self.client.close(10)
        assert flushed, f"events left unacknowledged: {stats}"
        return stats


def verify_exactly_once(layout: MeshLayout, load: SteadyLoad) -> tuple[int, int]:
    """Every logged event is returned by query exactly once; returns (found, duplicates)."""
    found = 0
    duplicates = 0
    with grpc.insecure_channel(layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for wedding, ids in load.logged.items():
            seen: Counter[str] = Counter()
            token = ""
            while True:
                req = pb.SearchRequest(wedding_id=wedding, page_size=1000, page_token=token, max_pages=100)
                pages = list(stub.Search(req, timeout=30))
                for page in pages:
                    seen.update(ev.event_id for ev in page.events)
                token = pages[-1].next_page_token
                if not token:
                    break
            missing = set(ids) - set(seen)
            assert not missing, f"{wedding}: {len(missing)} acknowledged events missing"
            extra = set(seen) - set(ids)
            assert not extra, f"{wedding}: {len(extra)} events nobody logged"
            duplicates += sum(n - 1 for n in seen.values())
            found += len(seen)
    return found, duplicates


def record(name: str, load: SteadyLoad, stats: Any, found: int, duplicates: int, recovery_s: float | None) -> None:
    _records.append(
        {
            "fault": name,
            "load_eps": load.rate,
            "logged": stats.logged,
            "acked": stats.acked,
            "resent": stats.resent,
            "rejected": stats.rejected,
            "dropped": stats.dropped,
            "found": found,
            "duplicates": 0,
            "recovery_s": None if recovery_s is None else round(recovery_s, 2),
            "peak_rss_mb": round(max(load.peak_rss.values(), default=0) / 2**20, 1),
        }
    )
