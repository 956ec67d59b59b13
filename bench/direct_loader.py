"""The baseline a user would build instead of the mesh: events written straight into the same
Cassandra tables with cassandra-driver, prepared statements and unlogged batches, in several
processes.

It writes what a processor writes for each event (``auditmesh.store.EventStore.write``): the
row in ``events_by_wedding`` (when the event has a wedding) and in ``events_by_user``, the
``events_by_id`` locator row, and a ``partitions`` row the first time the process writes a
(wedding or user, hour) partition; the events carry what ingest adds (source service,
priority, receipt time), so the rows are the same size. Writes are pipelined: the process
keeps ``concurrency`` statements in flight all the time, building the next events while earlier
ones are written, instead of writing a block and waiting for it.

Two groupings are measured: one unlogged batch per partition with the driver's ``bind`` (the
textbook approach), and batches grouped by owning replica (the Spark Cassandra Connector's
``replica_set`` grouping) with values encoded by :mod:`auditmesh.rowcodec`, exactly as the
processor writes them. The better of the two is the store's ceiling on this machine.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType

from auditmesh import rowcodec
from auditmesh.config import StoreConfig
from auditmesh.cqlbatch import BATCH_ROWS, ROW_OVERHEAD
from auditmesh.event_ids import locator_partition, new_client_prefix
from auditmesh.priority import CalendarSnapshot, assign_priority
from auditmesh.store import _KNOWN_PARTITIONS, SOCKET_OPTIONS, bucket_of, occurred_ms
from auditmesh.synthetic import Synthetic
from auditpb.v1 import audit_pb2 as pb

__all__ = ["run_loader"]

BATCH_EVENTS = 500
_NO_CALENDAR = CalendarSnapshot(frozenset(), frozenset(), frozenset(), False)  # as the benchmark's keyspace

Rows = dict[Any, list[tuple[Any, ...]]]
Marker = tuple[str, str, int]


class _Known:
    """The partitions this process has written a ``partitions`` row for, bounded as the
    store's own cache is: a partition forgotten gets its row written again (idempotent)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[Marker, None] = OrderedDict()

    def fresh(self, marker: Marker) -> bool:
        if marker in self._seen:
            return False
        self._seen[marker] = None
        if len(self._seen) > _KNOWN_PARTITIONS:
            self._seen.popitem(last=False)
        return True


def _by_partition(events: list[pb.Event], prepared: dict[str, Any], known: _Known) -> list[Any]:
    """Textbook statements: one unlogged batch (or a single insert) per partition, ``bind``."""
    groups: dict[tuple[str, Any], list[tuple[Any, ...]]] = {}
    for ev in events:
        ms = occurred_ms(ev)
        bucket = bucket_of(ms)
        common = (ms, ev.event_id, ev.severity, ev.outcome, ev.event_type, ev.organization_id, ev.SerializeToString())
        scoped = [("u", ev.user_id)] + ([("w", ev.wedding_id)] if ev.wedding_id else [])
        for scope, key in scoped:
            groups.setdefault((scope, (key, bucket)), []).append((key, bucket, *common))
            if known.fresh((scope, key, bucket)):
                groups.setdefault(("p", (scope, key)), []).append((scope, key, bucket))
        group, block = locator_partition(ev.event_id)
        groups.setdefault(("id", (group, block)), []).append((group, block, ev.event_id, ev.user_id, bucket, ms))
    statements: list[Any] = []
    for (table, _), rows in groups.items():
        if len(rows) == 1:
            statements.append(prepared[table].bind(rows[0]))
            continue
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for row in rows:
            batch.add(prepared[table], row)
        statements.append(batch)
    return statements


def _by_replica(events: list[pb.Event], prepared: dict[str, Any], known: _Known, keyspace: str) -> list[Any]:
    """The processor's statements (``EventStore.write`` on one node): rows encoded by rowcodec,
    each partition's rows together and its ``partitions`` row after them, then the locators,
    in unlogged batches of the store's size."""
    partitions: dict[tuple[str, str, int], list[tuple[bytes, ...]]] = {}
    locators: dict[tuple[str, int], list[tuple[bytes, ...]]] = {}
    for ev in events:
        ms = occurred_ms(ev)
        values = rowcodec.event_values(ms, ev)
        bucket = bucket_of(ms)
        if ev.wedding_id:
            partitions.setdefault(("w", ev.wedding_id, bucket), []).append(values)
        partitions.setdefault(("u", ev.user_id, bucket), []).append(values)
        event_id, occurred_at = values[1], values[0]  # already encoded for the event tables
        locators.setdefault(locator_partition(ev.event_id), []).append(
            (event_id, ev.user_id.encode(), rowcodec.int32(bucket), occurred_at)
        )
    flat: list[tuple[bytes, bytes, tuple[bytes, ...]]] = []
    for scope in ("w", "u"):
        query_id = prepared[scope].query_id
        for (s, key, bucket), rows in partitions.items():
            if s != scope:
                continue
            key_bytes, bucket_bytes = rowcodec.text(key), rowcodec.int32(bucket)
            route = rowcodec.routing_key(key_bytes, bucket_bytes)
            flat.extend((route, query_id, (key_bytes, bucket_bytes, *values)) for values in rows)
            if known.fresh((scope, key, bucket)):
                flat.append((route, prepared["p"].query_id, (scope.encode(), key_bytes, bucket_bytes)))
    for (group, block), rows in locators.items():
        group_bytes, block_bytes = rowcodec.text(group), rowcodec.int64(block)
        route = rowcodec.routing_key(group_bytes, block_bytes)
        flat.extend((route, prepared["id"].query_id, (group_bytes, block_bytes, *row)) for row in rows)
    statements: list[Any] = []
    for chunk in _chunks(flat, StoreConfig().max_batch_bytes):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for _, query_id, values in chunk:
            batch._add_statement_and_params(True, query_id, values)
        batch.keyspace = keyspace
        batch.routing_key = chunk[0][0]
        statements.append(batch)
    return statements


def _chunks(
    flat: list[tuple[bytes, bytes, tuple[bytes, ...]]], max_bytes: int
) -> Iterator[list[tuple[bytes, bytes, tuple[bytes, ...]]]]:
    """Consecutive rows cut into batches within the store's bounds: at most ``BATCH_ROWS`` rows
    and ``max_bytes`` bytes (values plus ``ROW_OVERHEAD`` per row)."""
    chunk: list[tuple[bytes, bytes, tuple[bytes, ...]]] = []
    size = 0
    for entry in flat:
        cost = ROW_OVERHEAD + sum(map(len, entry[2]))
        if chunk and (len(chunk) == BATCH_ROWS or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += cost
    if chunk:
        yield chunk


def _events(index: int) -> Iterator[list[pb.Event]]:
    """Endless 500-event blocks as the SDK and ingest make them: SDK ids, the time of making,
    the source service, and ingest's priority and receipt time."""
    prefix = new_client_prefix()  # ids as the SDK makes them, so locator rows group alike
    templates = list(Synthetic(weddings=1000, seed=500 + index).events(20_000))
    seq = 0
    source = f"direct-{index}"
    while True:
        now = time.time_ns()
        events = []
        for _ in range(BATCH_EVENTS):
            seq += 1
            ev = pb.Event(event_id=f"{prefix}{seq:x}", source_service=source, **templates[seq % len(templates)])
            ev.occurred_at.FromNanoseconds(now)
            ev.received_at_us = now // 1000
            assign_priority(ev, _NO_CALENDAR)
            events.append(ev)
        yield events


def run_loader(
    conn: Connection,
    *,
    keyspace: str,
    index: int,
    grouping: str,
    warmup_s: float,
    duration_s: float,
    concurrency: int,
    start_at: float,
    nice: int = 0,
) -> None:
    """Write events for ``warmup_s`` + ``duration_s`` with ``concurrency`` statements in flight;
    send the events fully written in the measured window (after the warm-up, until the last
    write started before the end has completed) and the window's length through ``conn``."""
    if nice:
        os.nice(nice)
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        consistency_level=ConsistencyLevel.ONE,
        request_timeout=30,
    )
    # The store's socket options (Nagle's algorithm off), so that the two differ in how they write only.
    cluster = Cluster(
        ["127.0.0.1"],
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        sockopts=SOCKET_OPTIONS,
    )
    session = cluster.connect()
    cols = "occurred_at, event_id, severity, outcome, event_type, organization_id, payload"
    marks = "?, ?, ?, ?, ?, ?, ?, ?, ?"
    prepared = {
        "w": session.prepare(f"INSERT INTO {keyspace}.events_by_wedding (wedding_id, bucket, {cols}) VALUES ({marks})"),
        "u": session.prepare(f"INSERT INTO {keyspace}.events_by_user (user_id, bucket, {cols}) VALUES ({marks})"),
        "p": session.prepare(f"INSERT INTO {keyspace}.partitions (scope, key, bucket) VALUES (?, ?, ?)"),
        "id": session.prepare(
            f"INSERT INTO {keyspace}.events_by_id (id_group, id_block, event_id, user_id, bucket, occurred_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        ),
    }
    known = _Known()
    blocks = _events(index)
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    written = [0]  # events whose every statement has completed
    errors: list[BaseException] = []

    def settle(left: list[int], events: int, error: BaseException | None) -> None:
        with lock:
            if error is not None:
                errors.append(error)
            left[0] -= 1
            if left[0] == 0:
                written[0] += events
        slots.release()

    def done(_: Any, left: list[int], events: int) -> None:
        settle(left, events, None)

    def failed(error: BaseException, left: list[int], events: int) -> None:
        settle(left, events, error)

    while time.time() < start_at:
        time.sleep(0.005)
    started = time.monotonic()
    measure_from = started + warmup_s
    end = measure_from + duration_s
    written_at_start: int | None = None
    window_started = measure_from
    while (now := time.monotonic()) < end and not errors:
        if written_at_start is None and now >= measure_from:
            with lock:
                written_at_start, window_started = written[0], time.monotonic()
        events = next(blocks)
        if grouping == "partition":
            statements = _by_partition(events, prepared, known)
        else:  # one node owns everything here, so grouping by replica is one group, in chunks
            statements = _by_replica(events, prepared, known, keyspace)
        block = ([len(statements)], len(events))
        for statement in statements:
            slots.acquire()
            future = session.execute_async(statement)
            future.add_callbacks(done, failed, callback_args=block, errback_args=block)
    for _ in range(concurrency):  # wait for what is in flight
        slots.acquire()
    window_ended = time.monotonic()
    cluster.shutdown()
    if errors:
        raise RuntimeError(f"direct loader write failed: {errors[0]!r}")
    conn.send(
        {
            "index": index,
            "written": written[0] - (written_at_start or 0),
            "elapsed_s": window_ended - window_started,
            "written_total": written[0],
        }
    )
    conn.close()
