"""The performance monitor as a process of a real mesh whose processors reach Cassandra through
a relay of this test's own: hanging the relay slows the store for this mesh and no one else."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.priority import CalendarEntry, snapshot_calendar
from auditmesh.store import EventStore
from auditmesh.supervisor import Supervisor, wait_healthy
from auditmesh.telemetry.monitor import read_alerts
from auditmesh.telemetry.scrape import Scrape, fetch
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import TEST_KEYSPACE, assert_eventually, slot_port, slot_redis_url
from tests.faults.proxy import Relay

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = slot_redis_url(14)
WRITE_MS = 250.0
"""The storage-write threshold of this mesh. The specification's 5 ms is the default; on this
shared two-core machine writes under load pass it on their own, and this test is about the
monitor seeing a store that stalls, raising and clearing, not about the machine's speed."""
WEDDING_DAY_FACTOR = 0.5


@dataclass
class MonitoredMesh:
    layout: MeshLayout
    supervisor: Supervisor
    relay: Relay

    def monitor(self) -> Scrape:
        return fetch(self.layout.metrics_targets()["monitor"], timeout=5)

    def write_measured(self) -> bool:
        """The monitor measured store writes in its last interval."""
        value = self.monitor().total("auditmesh_monitor_value", check="storage_write")
        return value is not None and value == value and value > 0  # NaN: nothing measured

    def alerts(self) -> dict[str, dict[str, object]]:
        active, _ = read_alerts(REDIS_URL, self.layout.alert_prefix)
        return {str(a["check"]): a for a in active}

    def history(self) -> list[dict[str, object]]:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return [json.loads(x) for x in client.lrange(f"{self.layout.alert_prefix}:history", 0, -1)]
        finally:
            client.close()


@pytest.fixture(scope="module")
def monitored(store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoredMesh]:
    """Ingest, two processors writing through the relay, query and the monitor (both reading
    Cassandra directly), the monitor checking every second."""
    relay = Relay(store_config.port, port=slot_port(29090))
    layout = MeshLayout(
        ingest_port=slot_port(29051),
        processor_base_port=slot_port(29061),
        processors=2,
        query_port=slot_port(29071),
        keyspace=TEST_KEYSPACE,
        extra_env={
            "AUDITMESH_TOKEN_KEY": "monitor-key",
            "AUDITMESH_REDIS_URL": REDIS_URL,
            "AUDITMESH_MONITOR_WRITE_MS": str(WRITE_MS),
            "AUDITMESH_MONITOR_WEDDING_DAY_FACTOR": str(WEDDING_DAY_FACTOR),
            "AUDITMESH_MONITOR_CALENDAR_REFRESH_S": "1",
            "AUDITMESH_MONITOR_CLEAR_AFTER": "3",
        },
    )
    supervisor = Supervisor(tmp_path_factory.mktemp("monitor"))
    with redis.Redis.from_url(REDIS_URL) as client:  # a previous run's alerts are not this one's
        client.delete(*(f"{layout.alert_prefix}:{k}" for k in ("alerts", "history", "checked")))
    try:
        for proc in layout.services():
            if proc.name.startswith("processor"):
                proc = dataclasses.replace(proc, env={**proc.env, "AUDITMESH_CASSANDRA_PORT": str(relay.port)})
            supervisor.start(proc)
        for proc in layout.services():
            wait_healthy(proc.target, 60, supervisor.log_file(proc.name))
        assert relay.accepted >= 2  # both processors write through the relay
        yield MonitoredMesh(layout, supervisor, relay)
    finally:
        relay.restore()
        layout.stop(supervisor)
        relay.close()


class _Load:
    """A thread logging ``rate`` events/s (every tenth P0) until stopped."""

    def __init__(self, target: str, rate: float = 200.0) -> None:
        self.client = AuditClient(target, source_service="monitor-test", linger_ms=10)
        self.rate = rate
        self.wedding = f"mon-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started, n = time.monotonic(), 0
        while not self._stop.is_set():
            if n >= (time.monotonic() - started) * self.rate:
                time.sleep(0.005)
                continue
            severity = pb.P0_CRITICAL if n % 10 == 0 else pb.P2_MEDIUM
            self.client.log("guestlist.viewed", user_id="u-mon", wedding_id=self.wedding, severity=severity)
            n += 1

    def end(self) -> None:
        self._stop.set()
        self._thread.join()
        flushed = self.client.flush(60)
        self.client.close(10)
        assert flushed, f"events left unacknowledged: {self.client.stats}"


def _status(layout: MeshLayout, run_dir: Path) -> str:
    env = {
        **os.environ,
        "AUDITMESH_INGEST_PORT": str(layout.ingest_port),
        "AUDITMESH_PROCESSOR_BASE_PORT": str(layout.processor_base_port),
        "AUDITMESH_PROCESSOR_COUNT": str(layout.processors),
        "AUDITMESH_QUERY_PORT": str(layout.query_port),
        "AUDITMESH_REDIS_URL": REDIS_URL,
        "AUDITMESH_RUN_DIR": str(run_dir),
    }
    cmd = [sys.executable, "-m", "auditmesh.cli", "status"]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout


def test_a_stalled_store_raises_a_write_alert_within_two_seconds_and_it_clears_after(
    monitored: MonitoredMesh, tmp_path: Path
) -> None:
    """With events flowing, hanging this mesh's path to Cassandra raises a storage_write alert
    within 2 s, stored in Redis and shown by the monitor's endpoint and `auditmesh status`; it
    stays raised while the store hangs and clears after the store answers again."""
    load = _Load(monitored.layout.ingest_target)
    try:
        # Writes flow, and nothing is raised before the fault.
        assert_eventually(monitored.write_measured)
        assert_eventually(lambda: "storage_write" not in monitored.alerts(), timeout=60)
        hung = time.monotonic()
        monitored.relay.hang()
        try:
            assert_eventually(lambda: "storage_write" in monitored.alerts(), timeout=10, interval=0.02)
            raised_after = time.monotonic() - hung
            assert raised_after <= 2.0, f"raised {raised_after:.2f}s after the store hung"
            scrape = monitored.monitor()
            assert scrape.total("auditmesh_monitor_alert_active", check="storage_write") == 1
            assert (scrape.total("auditmesh_monitor_value", check="storage_write") or 0) > WRITE_MS / 1000 * 0.5
            assert "ALERT storage_write" in _status(monitored.layout, tmp_path)
            time.sleep(max(0.0, 3.0 - (time.monotonic() - hung)))
            assert "storage_write" in monitored.alerts(), "cleared while the store still hung"
        finally:
            monitored.relay.restore()
        restored = time.monotonic()
        assert_eventually(lambda: "storage_write" not in monitored.alerts(), timeout=60)
        cleared_after = time.monotonic() - restored
        print(
            f"storage_write raised {raised_after:.2f}s after the store hung, "
            f"cleared {cleared_after:.2f}s after it answered"
        )
        assert cleared_after >= 2.5, "cleared before three intervals under the clear level (no hysteresis)"
    finally:
        load.end()
    states = [h["state"] for h in monitored.history() if h["check"] == "storage_write"]
    assert states[:2] == ["cleared", "raised"], states  # newest first
    assert monitored.monitor().total("auditmesh_monitor_alert_active", check="storage_write") == 0


def test_a_wedding_today_makes_the_thresholds_stricter(monitored: MonitoredMesh, store_config: StoreConfig) -> None:
    """A wedding of the calendar that is today makes the monitor apply the wedding-day
    thresholds (the write threshold times the factor); moved to another day, the normal ones."""
    wedding = f"mon-wedding-{uuid.uuid4().hex[:8]}"
    today = dt.datetime.now(dt.UTC).date()
    store = EventStore.connect(store_config)

    def put(day: dt.date) -> None:
        asyncio.run(store.put_calendar([CalendarEntry(wedding, day, "UTC")]))

    def threshold() -> float | None:
        return monitored.monitor().total("auditmesh_monitor_threshold", check="storage_write")

    try:
        put(today)
        assert_eventually(lambda: monitored.monitor().total("auditmesh_monitor_wedding_day") == 1, timeout=15)
        assert threshold() == pytest.approx(WRITE_MS / 1000 * WEDDING_DAY_FACTOR)
        put(today - dt.timedelta(days=30))
        others = snapshot_calendar(asyncio.run(store.calendar()), dt.datetime.now(dt.UTC)).today
        if not others:  # another test's wedding today would rightly keep the stricter thresholds
            assert_eventually(lambda: monitored.monitor().total("auditmesh_monitor_wedding_day") == 0, timeout=15)
            assert threshold() == pytest.approx(WRITE_MS / 1000)
    finally:
        put(today - dt.timedelta(days=30))
        store.close()
