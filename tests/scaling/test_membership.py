"""Membership against the real services: a processor that registers gets traffic within a
couple of seconds, and one that is stopped drains without losing or duplicating an event."""

from __future__ import annotations

import re
import time

import pytest

from auditmesh.cli import main
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor
from tests.conftest import assert_eventually
from tests.scaling.conftest import scaler_status, scaling_mesh
from tests.scaling.load import StepLoad, stored_counts

# The scaler runs but changes nothing by itself here: min 1, max 2, a load far under capacity
# and a cool-down longer than the test.
QUIET_SCALER = {
    "AUDITMESH_SCALER_MIN_REPLICAS": "1",
    "AUDITMESH_SCALER_MAX_REPLICAS": "2",
    "AUDITMESH_SCALER_EVENTS_PER_PROCESSOR": "100000",
    "AUDITMESH_SCALER_PROCESSING_P99_MS": "100000",
    "AUDITMESH_SCALER_DOWN_COOLDOWN_S": "3600",
}


def written_by(layout: MeshLayout, address: str) -> int:
    members = {m.address: m for m in scaler_status(layout).members if m.service == "processor"}
    return members[address].events_total if address in members else 0


def check_cli(
    layout: MeshLayout, supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``auditmesh status`` lists the scaler as up; ``auditmesh scaler status`` shows two processors."""
    for name, value in {
        "AUDITMESH_INGEST_PORT": layout.ingest_port,
        "AUDITMESH_QUERY_PORT": layout.query_port,
        "AUDITMESH_PROCESSOR_BASE_PORT": layout.processor_base_port,
        "AUDITMESH_PROCESSOR_COUNT": 1,
        "AUDITMESH_MONITOR": 0,
        "AUDITMESH_RUN_DIR": supervisor.run_dir,
    }.items():
        monkeypatch.setenv(name, str(value))
    capsys.readouterr()
    assert main(["status"]) == 0
    assert re.search(rf"^scaler +up +{re.escape(layout.scaler_target)} +SERVING$", capsys.readouterr().out, re.M)
    assert main(["scaler", "status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^processors +2 running, target 2 \(min 1, max 2", out, re.M), out
    assert "forecast" in out and "decisions" in out and layout.processor(1).target in out


def test_a_processor_that_registers_gets_events_and_one_that_drains_loses_none(
    store_config: StoreConfig,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A processor started beside a running mesh is written to soon after it registers, the CLI
    shows the scaler and both processors, and stopping it under load (deregister, drain) leaves
    every acknowledged event stored exactly once."""
    with scaling_mesh(tmp_path_factory, "membership", 27551, env=QUIET_SCALER) as (layout, supervisor):
        load = StepLoad(layout.ingest_target, rate=200).start()
        try:
            second = layout.processor(1)
            supervisor.start(second)
            started = time.monotonic()
            assert_eventually(lambda: written_by(layout, second.target) > 0, timeout=30, interval=0.1)
            joined_s = time.monotonic() - started
            # Start-up of the process (imports, Cassandra session) comes before registration;
            # the membership part is bounded by the 0.5 s poll and a report interval.
            assert joined_s < 20, joined_s
            check_cli(layout, supervisor, monkeypatch, capsys)
            time.sleep(2)
            supervisor.stop(second.name)
            assert supervisor.pid(second.name) is None
            time.sleep(2)
        finally:
            load.stop()
        counts = stored_counts(layout, load.wedding_ids)
        assert set(counts) == set(load.logged)
        assert max(counts.values()) == 1
        ingest_log = supervisor.log_file("ingest").read_text()
        assert f"processor {second.target} joined" in ingest_log
        assert f"processor {second.target} left" in ingest_log
        # Ingest retired its links before the processor stopped: no stream broke under it.
        assert f"processor {second.target} closed the stream" not in ingest_log
        assert f"processor {second.target} unreachable" not in ingest_log
        log = supervisor.log_file(second.name).read_text()
        assert "deregistered" in log and "streams closed" in log, log[-2000:]
