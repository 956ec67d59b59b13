"""The baseline a user would build instead of the mesh: events written straight into the same
Cassandra tables with cassandra-driver, prepared statements, unlogged batches and
``execute_concurrent``, in several processes.

Two groupings are measured: one unlogged batch per partition with the driver's ``bind`` (the
textbook approach), and batches grouped by owning replica (the Spark Cassandra Connector's
``replica_set`` grouping) with values encoded by :mod:`auditmesh.rowcodec`, exactly as the
processor writes them. The better of the two is the store's ceiling on this machine.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.concurrent import execute_concurrent
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType

from auditmesh import rowcodec
from auditmesh.event_ids import locator_partition, new_client_prefix
from auditmesh.store import bucket_of, occurred_ms
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb

__all__ = ["run_loader"]

BATCH_EVENTS = 500


Rows = dict[Any, list[tuple[Any, ...]]]


def _rows(events: list[pb.Event]) -> tuple[Rows, Rows, Rows]:
    """Rows of the two event tables and of the id locator, by partition."""
    by_wedding: Rows = {}
    by_user: Rows = {}
    by_id: Rows = {}
    for ev in events:
        ms = occurred_ms(ev)
        bucket = bucket_of(ms)
        common = (ms, ev.event_id, ev.severity, ev.outcome, ev.event_type, ev.organization_id, ev.SerializeToString())
        if ev.wedding_id:
            by_wedding.setdefault((ev.wedding_id, bucket), []).append((ev.wedding_id, bucket, *common))
        by_user.setdefault((ev.user_id, bucket), []).append((ev.user_id, bucket, *common))
        group, block = locator_partition(ev.event_id)
        by_id.setdefault((group, block), []).append((group, block, ev.event_id, ev.user_id, bucket, ms))
    return by_wedding, by_user, by_id


def _encoded(events: list[pb.Event]) -> list[tuple[str, bytes, tuple[bytes, ...]]]:
    """Rows of the three tables as (table, routing key, encoded values), partition by partition."""
    partitions: dict[tuple[str, Any], list[tuple[bytes, ...]]] = {}
    for ev in events:
        ms = occurred_ms(ev)
        values = rowcodec.event_values(ms, ev)
        bucket = bucket_of(ms)
        if ev.wedding_id:
            partitions.setdefault(("w", (ev.wedding_id, bucket)), []).append(values)
        partitions.setdefault(("u", (ev.user_id, bucket)), []).append(values)
        event_id, occurred_at = values[1], values[0]  # already encoded for the event tables
        partitions.setdefault(("id", locator_partition(ev.event_id)), []).append(
            (event_id, ev.user_id.encode(), rowcodec.int32(bucket), occurred_at)
        )
    out: list[tuple[str, bytes, tuple[bytes, ...]]] = []
    for (table, key), rows in partitions.items():
        first = rowcodec.text(key[0])
        second = rowcodec.int64(key[1]) if table == "id" else rowcodec.int32(key[1])
        route = rowcodec.routing_key(first, second)
        out.extend((table, route, (first, second, *values)) for values in rows)
    return out


def run_loader(
    conn: Connection,
    *,
    keyspace: str,
    index: int,
    grouping: str,
    duration_s: float,
    concurrency: int,
    start_at: float,
) -> None:
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        consistency_level=ConsistencyLevel.ONE,
        request_timeout=30,
    )
    cluster = Cluster(["127.0.0.1"], protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    session = cluster.connect()
    cols = "occurred_at, event_id, severity, outcome, event_type, organization_id, payload"
    marks = "?, ?, ?, ?, ?, ?, ?, ?, ?"
    ins_w = session.prepare(f"INSERT INTO {keyspace}.events_by_wedding (wedding_id, bucket, {cols}) VALUES ({marks})")
    ins_u = session.prepare(f"INSERT INTO {keyspace}.events_by_user (user_id, bucket, {cols}) VALUES ({marks})")
    ins_id = session.prepare(
        f"INSERT INTO {keyspace}.events_by_id (id_group, id_block, event_id, user_id, bucket, occurred_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    statement = {"w": ins_w, "u": ins_u, "id": ins_id}
    prefix = new_client_prefix()  # ids as the SDK makes them, so locator rows group alike
    synthetic = Synthetic(weddings=1000, seed=500 + index)
    templates = list(synthetic.events(20_000))
    while time.time() < start_at:
        time.sleep(0.005)
    started = time.monotonic()
    written = 0
    seq = 0
    while time.monotonic() - started < duration_s:
        now = time.time_ns()
        events = []
        for _ in range(BATCH_EVENTS):
            ev = pb.Event(event_id=f"{prefix}{seq:x}", **templates[seq % len(templates)])
            ev.occurred_at.FromNanoseconds(now)
            events.append(ev)
            seq += 1
        statements: list[tuple[Any, Any]] = []
        if grouping == "partition":
            by_wedding, by_user, by_id = _rows(events)
            for prepared, groups in ((ins_w, by_wedding), (ins_u, by_user), (ins_id, by_id)):
                for rows in groups.values():
                    if len(rows) == 1:
                        statements.append((prepared, rows[0]))
                        continue
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for row in rows:
                        batch.add(prepared, row)
                    statements.append((batch, ()))
        else:  # one node owns everything here, so grouping by replica is one group, in chunks
            flat = _encoded(events)
            for start in range(0, len(flat), 200):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for table, _, values in flat[start : start + 200]:
                    batch._add_statement_and_params(True, statement[table].query_id, values)
                batch.keyspace = keyspace
                batch.routing_key = flat[start][1]
                statements.append((batch, ()))
        results = execute_concurrent(session, statements, concurrency=concurrency, raise_on_first_error=True)
        assert all(ok for ok, _ in results)
        written += len(events)
    elapsed = time.monotonic() - started
    cluster.shutdown()
    conn.send({"index": index, "written": written, "elapsed_s": elapsed})
    conn.close()
