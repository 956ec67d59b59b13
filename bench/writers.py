"""Three ways to write the processor's rows into Cassandra, for ``bench.write_path``'s written
phase: the store (:class:`auditmesh.store.EventStore`, rows encoded by ``rowcodec`` and sent
through cassandra-driver), cassandra-driver's own ``BatchStatement.add`` with bound values,
and acsylla (the DataStax C++ driver's Python binding).

Each writes an event's rows to ``events_by_wedding`` (when it has a wedding), ``events_by_user``
and ``events_by_id``, grouped by partition, in unlogged batches of up to 100 rows, with at most
``max_write_statements`` batches in flight, and returns once Cassandra has answered every one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType

from auditmesh import cqlbatch, event_ids
from auditmesh.config import StoreConfig
from auditmesh.store import BUCKET_MS, EventStore
from auditpb.v1 import audit_pb2 as pb


def _prepared(store: EventStore) -> dict[str, Any]:
    """The store's prepared inserts, by the table letters of :func:`_rows`."""
    return {"w": store._ins_wedding, "u": store._ins_user, "l": store._ins_locator}


def _rows(events: Sequence[pb.Event]) -> dict[tuple[str, str, int], list[tuple[str, list[Any]]]]:
    """Each partition's rows as (table, bound values), in the store's order."""
    parts: dict[tuple[str, str, int], list[tuple[str, list[Any]]]] = {}
    for ev in events:
        ts = ev.occurred_at
        ms = ts.seconds * 1000 + ts.nanos // 1_000_000
        bucket = ms // BUCKET_MS
        tail = [ms, ev.event_id, ev.severity, ev.outcome, ev.event_type, ev.organization_id, ev.SerializeToString()]
        if ev.wedding_id:
            parts.setdefault(("w", ev.wedding_id, bucket), []).append(("w", [ev.wedding_id, bucket, *tail]))
        parts.setdefault(("u", ev.user_id, bucket), []).append(("u", [ev.user_id, bucket, *tail]))
        group, block = event_ids.locator_partition(ev.event_id)
        parts.setdefault(("l", group, block), []).append(("l", [group, block, ev.event_id, ev.user_id, bucket, ms]))
    return parts


def _cut(parts: dict[Any, list[tuple[str, list[Any]]]]) -> list[list[tuple[str, list[Any]]]]:
    rows = [row for rows in parts.values() for row in rows]
    return [rows[start : start + cqlbatch.BATCH_ROWS] for start in range(0, len(rows), cqlbatch.BATCH_ROWS)]


class StoreWriter:
    """The processor's own write path."""

    name = "store"

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def write(self, events: Sequence[pb.Event]) -> None:
        await self._store.write(events)


class DriverWriter:
    """cassandra-driver as its documentation shows it: prepared inserts bound into a batch."""

    name = "driver_bind"

    def __init__(self, store: EventStore, cfg: StoreConfig) -> None:
        self._store = store
        self._slots = asyncio.Semaphore(cfg.max_write_statements)
        self._prepared = _prepared(store)

    def _batch(self, rows: list[tuple[str, list[Any]]]) -> BatchStatement:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for table, values in rows:
            batch.add(self._prepared[table], values)
        return batch

    async def write(self, events: Sequence[pb.Event]) -> None:
        await self._store._run(_cut(_rows(events)), build=self._batch, slots=self._slots)


class AcsyllaWriter:
    """acsylla 1.2: prepared inserts bound row by row into its batches."""

    name = "acsylla"

    def __init__(self, store: EventStore, cfg: StoreConfig) -> None:
        self._cfg = cfg
        self._queries = {table: prepared.query_string for table, prepared in _prepared(store).items()}
        self._slots = asyncio.Semaphore(cfg.max_write_statements)
        self._session: Any = None
        self._prepared: dict[str, Any] = {}

    async def open(self) -> None:
        import acsylla

        self._acsylla = acsylla
        cluster = acsylla.create_cluster(
            list(self._cfg.hosts),
            port=self._cfg.port,
            consistency=getattr(acsylla.Consistency, self._cfg.consistency),
            log_level="error",  # its shard-awareness notice on connect to a non-Scylla node
        )
        self._session = await cluster.create_session()
        prepare = self._session.create_prepared
        # The store's own inserts, so that both drivers write the same statements.
        self._prepared = {table: await prepare(query) for table, query in self._queries.items()}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, batch: Any) -> None:
        try:
            await self._session.execute_batch(batch)
        finally:
            self._slots.release()

    async def write(self, events: Sequence[pb.Event]) -> None:
        sends = []
        for rows in _cut(_rows(events)):
            batch = self._acsylla.create_batch_unlogged()
            for table, values in rows:
                # acsylla takes a timestamp as float seconds and truncates seconds * 1000: half a
                # millisecond more keeps the float's rounding from storing the millisecond before.
                at = 5 if table == "l" else 2
                values[at] = (values[at] + 0.5) / 1000
                statement = self._prepared[table].bind()
                statement.bind_list(values)
                batch.add_statement(statement)
            await self._slots.acquire()
            sends.append(asyncio.ensure_future(self._send(batch)))
        await asyncio.gather(*sends)
