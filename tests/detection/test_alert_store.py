"""The alert store against the real Cassandra: rows encoded by the store read back through the
driver as it would have bound them, under every scope, and a later version of an alert wins."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.cluster import Cluster

from auditmesh import cqlbatch
from auditmesh.config import StoreConfig
from auditmesh.detection.alerts import AlertStore
from auditmesh.errors import PermanentError
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb


def _alert(run: str, k: int, count: int = 1, **fields: object) -> apb.Alert:
    alert = apb.Alert(
        alert_id=f"{run}-{k}",
        rule=fields.pop("rule", "any_p0_event"),  # type: ignore[arg-type]
        severity=fields.pop("severity", pb.P0_CRITICAL),  # type: ignore[arg-type]
        count=count,
        **fields,  # type: ignore[arg-type]
    )
    alert.created_at.FromMilliseconds(1_764_800_000_000 + k)
    alert.updated_at.CopyFrom(alert.created_at)
    return alert


def test_stored_rows_read_back_under_every_scope_and_the_last_version_wins(store_config: StoreConfig) -> None:
    run = uuid.uuid4().hex[:8]
    wedding, org = f"wed-{run}-é", f"org-{run}"
    alerts = [
        _alert(run, 0, wedding_id=wedding, organization_id=org),
        _alert(run, 1, count=255, wedding_id=wedding, rule="brute_force_user", severity=pb.P1_HIGH),
        _alert(run, 2, organization_id=org, rule="règle ✓"),
    ]
    # A later version of alert 1 in the same write (its running count): its rows are the ones kept.
    # Rows of one batch share a timestamp, and Cassandra breaks that tie by the greater value, which
    # is the earlier payload here (varint 255 is ff 01, 256 is 80 02).
    newer = _alert(run, 1, count=256, wedding_id=wedding, rule="brute_force_user", severity=pb.P1_HIGH)
    cluster = Cluster([store_config.hosts[0]], port=store_config.port, protocol_version=4)
    session = cluster.connect()
    try:
        store = AlertStore(session, store_config.keyspace, store_config.max_batch_bytes)
        asyncio.run(store.put([*alerts, newer]))
        day = 1_764_800_000_000 // 86_400_000
        rows = {}
        for scope in ("all", "w:" + wedding, "o:" + org):
            for row in session.execute(
                f"SELECT scope, day, created_at, alert_id, rule, severity, payload FROM {store_config.keyspace}.alerts"
                " WHERE scope = %s AND day = %s",
                (scope, day),
            ):
                if row.alert_id.startswith(run):
                    rows[(scope, row.alert_id)] = row
        assert sorted(rows) == sorted(
            [("all", f"{run}-0"), ("all", f"{run}-1"), ("all", f"{run}-2")]
            + [("w:" + wedding, f"{run}-0"), ("w:" + wedding, f"{run}-1")]
            + [("o:" + org, f"{run}-0"), ("o:" + org, f"{run}-2")]
        )
        by_id = {a.alert_id: a for a in [*alerts, newer]}
        for (_scope, alert_id), row in rows.items():
            alert = by_id[alert_id]
            assert (row.day, row.rule, row.severity) == (day, alert.rule, alert.severity)
            assert row.created_at.timestamp() * 1000 == alert.created_at.ToMilliseconds()
            assert apb.Alert.FromString(row.payload) == alert
        assert apb.Alert.FromString(rows[("all", f"{run}-1")].payload).count == 256

        page = asyncio.run(
            store.list(apb.AlertFilter(wedding_id=wedding), since_ms=1_764_800_000_000, until_ms=1_764_800_001_000)
        )
        assert [(a.alert_id, a.count) for a in page.alerts] == [(f"{run}-1", 256), (f"{run}-0", 1)]
    finally:
        cluster.shutdown()


def test_a_large_write_is_cut_into_batches_within_the_byte_bound(
    store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alert batches span partitions, so Cassandra's batch size limit applies to them: a write is
    cut by the store's ``max_batch_bytes`` (here 16 KiB), and every alert still lands."""
    run = uuid.uuid4().hex[:8]
    alerts = [_alert(run, k, wedding_id=f"wed-{run}", explanation="x" * 1000) for k in range(60)]
    sent: list[int] = []
    real_execute = cqlbatch.execute

    def recorded(session: Any, batch: cqlbatch.EncodedBatch, timeout: float) -> Any:
        sent.append(sum(cqlbatch.ROW_OVERHEAD + len(row) for row in batch.rows))
        return real_execute(session, batch, timeout)

    monkeypatch.setattr(cqlbatch, "execute", recorded)
    cluster = Cluster([store_config.hosts[0]], port=store_config.port, protocol_version=4)
    try:
        store = AlertStore(cluster.connect(), store_config.keyspace, 16 * 1024)
        asyncio.run(store.put(alerts))
        page = asyncio.run(
            store.list(
                apb.AlertFilter(wedding_id=f"wed-{run}"),
                since_ms=1_764_800_000_000,
                until_ms=1_764_800_001_000,
                page_size=100,
            )
        )
    finally:
        cluster.shutdown()
    assert sorted(a.alert_id for a in page.alerts) == sorted(a.alert_id for a in alerts)
    assert len(sent) >= 120 * 1000 // (16 * 1024) and max(sent) <= 16 * 1024


def test_a_table_of_other_column_types_fails_every_write() -> None:
    """The insert is checked against the encoding before it is kept: a mismatch refuses every
    write, not only the first (a pure unit: the session only prepares)."""
    columns = [SimpleNamespace(name=f"c{i}", type=cqltypes.VarcharType) for i in range(7)]
    session = SimpleNamespace(
        prepare=lambda text: SimpleNamespace(column_metadata=columns, query_string=text, query_id=b"q")
    )
    store = AlertStore(session, "ks", 64 * 1024)
    for _ in range(2):
        with pytest.raises(PermanentError, match="schema mismatch"):
            asyncio.run(store.put([_alert("x", 0)]))
