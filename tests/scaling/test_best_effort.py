"""Reports are best effort: with the scaler killed, the mesh keeps acknowledging and storing
every event, and the services say once that reports are paused."""

from __future__ import annotations

import pytest

from auditmesh.config import StoreConfig
from tests.conftest import assert_eventually
from tests.scaling.conftest import scaler_status, scaling_mesh
from tests.scaling.load import StepLoad, stored_counts
from tests.scaling.test_membership import QUIET_SCALER


def test_the_mesh_keeps_storing_every_event_with_the_scaler_killed(
    store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """kill -9 of the scaler under load: every event logged before and after is acknowledged and
    stored exactly once, and ingest and the processor log that their reports are paused."""
    with scaling_mesh(tmp_path_factory, "no-scaler", 27351, env=QUIET_SCALER) as (layout, supervisor):
        load = StepLoad(layout.ingest_target, rate=200).start()
        try:
            reporting = {layout.ingest_target, layout.processor(0).target}
            assert_eventually(lambda: reporting <= {m.address for m in scaler_status(layout).members if m.age_s >= 0})
            logged = {name: len(supervisor.log_file(name).read_text()) for name in ("ingest", "processor-0")}
            supervisor.kill("scaler")
            before = load.client.stats.acked
            assert_eventually(lambda: load.client.stats.acked > before + 1000, timeout=30)
        finally:
            load.stop()
        counts = stored_counts(layout, load.wedding_ids)
        for name in ("ingest", "processor-0"):
            log = supervisor.log_file(name).read_text()[logged[name] :]
            assert log.count(f"scaler {layout.scaler_target} not reachable, reports paused") == 1, name
    assert set(counts) == set(load.logged)
    assert max(counts.values()) == 1
