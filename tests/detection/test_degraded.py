"""A Redis outage degrades correlation, never ingestion: with the processors' Redis unreachable,
every event is still acknowledged, and the lost correlation updates are counted in the metrics."""

from __future__ import annotations

import re
import urllib.request

import pytest

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import assert_eventually, own_mesh, slot_port
from tests.detection.conftest import PACK


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_redis_down_counts_lost_correlation_and_acks_every_event(
    tmp_path_factory: pytest.TempPathFactory, store_config: StoreConfig
) -> None:
    """With Redis unreachable, 300 failed logins are all acknowledged, and each processor that saw
    some counts Redis errors and lost group updates on its metrics endpoint."""
    nowhere = f"redis://127.0.0.1:{slot_port(27199)}/0"  # nothing listens there
    env = {"AUDITMESH_DETECTION_RULES": str(PACK), "AUDITMESH_DETECTION_REDIS_TIMEOUT_S": "0.2"}
    with own_mesh(
        tmp_path_factory,
        "degraded",
        27151,
        processors=1,
        env={"AUDITMESH_REDIS_URL": nowhere},
        service_env={"processor": env},
    ) as (layout, _):
        client = AuditClient(layout.ingest_target, source_service="degraded-test")
        try:
            for i in range(300):
                client.log("auth.login.failed", user_id=f"u-{i % 3}", source_ip="ip-1", outcome=pb.OUTCOME_FAILURE)
            client.flush(timeout=60)
            assert client.stats.acked == 300 and client.stats.rejected == 0
        finally:
            client.close()
        port = layout.metrics_port(layout.processor(0).port)

        def counted() -> None:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert _metric(text, "auditmesh_detection_events_evaluated_total") == 300
            assert _metric(text, "auditmesh_detection_redis_errors_total") >= 1
            assert _metric(text, "auditmesh_detection_degraded_updates_total") >= 1

        assert_eventually(counted, timeout=30)
