"""Fault-test fixtures: a mesh of its own (three processors) that the tests may kill, a steady
SDK load whose every event is checked afterwards, and the record behind the README's
"faults survived" table (bench/results/faults-latest.json).

The record holds measured values only. Each fault is marked passed or failed by the outcome of
its whole test (assertions after ``record`` included), a failing test that recorded nothing
still gets a failed entry, and the file says whether the run as a whole passed and ran every
fault test; ``python -m bench.report faults`` renders nothing else.
"""

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
_HERE = Path(__file__).resolve().parent


class FaultRecord:
    """What one run measured per fault, each entry marked by the outcome of its test."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.outcomes: dict[str, bool] = {}  # test id -> passed, for every fault test that ran
        self.not_selected: list[str] = []

    def add(
        self,
        name: str,
        test: str,
        load: SteadyLoad,
        stats: Any,
        found: int,
        duplicates: int,
        recovery_s: float | None,
    ) -> None:
        self.entries.append(
            {
                "fault": name,
                "test": test,
                "passed": None,  # set by the outcome of ``test``
                "load_eps": load.rate,
                "logged_eps": round(load.logged_eps, 1),
                "logged": stats.logged,
                "acked": stats.acked,
                "resent": stats.resent,
                "rejected": stats.rejected,
                "dropped": stats.dropped,
                "found": found,
                "duplicates": duplicates,
                "recovery_s": None if recovery_s is None else round(recovery_s, 2),
                "peak_rss_mb": round(max(load.peak_rss.values(), default=0) / 2**20, 1),
            }
        )

    def outcome(self, report: pytest.TestReport) -> None:
        """A fault test passed only if its setup, call and teardown all passed; a failing test
        that recorded nothing still gets an entry, marked failed."""
        if report.when == "call" or report.failed:
            self.outcomes[report.nodeid] = self.outcomes.get(report.nodeid, True) and report.passed
        mine = [entry for entry in self.entries if entry["test"] == report.nodeid]
        if report.failed:
            for entry in mine:
                entry["passed"] = False
            if not mine:
                self.entries.append({"fault": report.nodeid, "test": report.nodeid, "passed": False})
        elif report.when == "call":
            for entry in mine:
                entry["passed"] = True

    def document(self, fault_tests: list[str], exit_status: int, tests_failed: int) -> dict[str, Any]:
        """The results file: the entries, whether the run passed, and whether it ran every fault test."""
        not_run = sorted(set(self.not_selected) | {t for t in fault_tests if t not in self.outcomes})
        passed = exit_status == 0 and tests_failed == 0 and all(e["passed"] is True for e in self.entries)
        return {
            "run": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "passed": passed,
            "complete": not not_run,
            "exit_status": exit_status,
            "not_run": not_run,
            "faults": self.entries,
        }


_record = FaultRecord()
_current_test = [""]


def _is_fault_test(item: pytest.Item) -> bool:
    return _HERE in Path(str(item.path)).resolve().parents


@pytest.fixture(autouse=True)
def _fault_test_id(request: pytest.FixtureRequest) -> Iterator[None]:
    """The id of the running fault test, so that ``record`` ties its entry to the test's outcome."""
    _current_test[0] = request.node.nodeid
    yield
    _current_test[0] = ""


def pytest_deselected(items: list[pytest.Item]) -> None:
    _record.not_selected.extend(item.nodeid for item in items if _is_fault_test(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/faults/"):  # a failure elsewhere is not a fault test's
        _record.outcome(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the record of a run that recorded any fault, saying whether it passed and ran every fault test."""
    if not _record.entries:
        return
    fault_tests = [item.nodeid for item in session.items if _is_fault_test(item)]
    doc = _record.document(fault_tests, int(exitstatus), session.testsfailed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


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
    max_pending_events: int = 200_000
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    logged: dict[str, list[str]] = field(default_factory=dict)
    client: AuditClient | None = None

    def __post_init__(self) -> None:
        self.wedding_ids = [f"fault-{self.run}-{i}" for i in range(self.weddings)]
        self.logged = {w: [] for w in self.wedding_ids}
        self.critical: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.peak_rss: dict[str, int] = {}
        self.started = self.stopped = 0.0

    def start(self) -> SteadyLoad:
        self.client = AuditClient(
            self.target,
            source_service="faults",
            batch_size=200,
            linger_ms=10,
            max_pending_events=self.max_pending_events,
        )
        self.started = time.monotonic()
        self._thread.start()
        return self

    @property
    def logged_eps(self) -> float:
        """Events logged per second, as measured over the load's run."""
        return sum(map(len, self.logged.values())) / max((self.stopped or time.monotonic()) - self.started, 1e-9)

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
            event_id = self.client.log(
                "guestlist.viewed",
                user_id=f"u-{self.run}-{n % 17}",
                organization_id="org",
                wedding_id=wedding,
                severity=severity,
            )
            self.logged[wedding].append(event_id)
            if severity == pb.P0_CRITICAL:
                self.critical.add(event_id)
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
        self.stopped = time.monotonic()
        assert self.client is not None
        flushed = self.client.flush(flush_timeout)
        stats = self.client.stats
        self.client.close(10)
        assert flushed, f"events left unacknowledged: {stats}"
        return stats


@dataclass
class Found:
    """What query returned for a load's weddings, against what the load logged."""

    found: int
    duplicates: int
    missing: set[str]
    extra: set[str]
    ids: set[str]


def search_load(layout: MeshLayout, load: SteadyLoad) -> Found:
    """Every event query returns for the load's weddings, counted (duplicates included)."""
    result = Found(0, 0, set(), set(), set())
    with grpc.insecure_channel(layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for wedding, ids in load.logged.items():
            seen: Counter[str] = Counter()
            token = ""
            while True:
                req = pb.SearchRequest(wedding_id=wedding, page_size=1000, page_token=token, max_pages=100)
                # A check of what is stored, not of latency: right after a fault (a Cassandra node
                # just restarted, a cold JVM replaying hints on this two-core host) one call for
                # up to 100 pages has taken over 30 s.
                pages = list(stub.Search(req, timeout=120))
                for page in pages:
                    seen.update(ev.event_id for ev in page.events)
                token = pages[-1].next_page_token
                if not token:
                    break
            result.missing |= set(ids) - set(seen)
            result.extra |= set(seen) - set(ids)
            result.duplicates += sum(n - 1 for n in seen.values())
            result.found += len(seen)
            result.ids |= set(seen)
    return result


def record(name: str, load: SteadyLoad, stats: Any, found: int, duplicates: int, recovery_s: float | None) -> None:
    """Add this fault's measured values to the run's record, tied to the running test's outcome."""
    _record.add(name, _current_test[0], load, stats, found, duplicates, recovery_s)
