"""Cassandra adapter: the only module that talks to cassandra-driver.

Writes are idempotent by (partition, occurred_at, event_id): a resent event lands on the same
row. Driver exceptions are translated here, once: connection trouble and timeouts become
:class:`StoreUnavailable` (retryable), anything else :class:`PermanentError`.
The driver is callback based; :meth:`EventStore._run` joins many statements into one asyncio
future with a single cross-thread wake-up per call, not one per statement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cassandra import ConsistencyLevel, OperationTimedOut, Timeout, Unavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, SimpleStatement

from auditmesh import cqlbatch, event_ids, rowcodec
from auditmesh.config import StoreConfig
from auditmesh.errors import PermanentError, StoreUnavailable
from auditmesh.priority import CalendarEntry
from auditpb.v1 import audit_pb2 as pb

__all__ = ["BUCKET_MS", "DAY_MS", "EventStore", "Row", "WriteStats", "bucket_of", "occurred_ms"]

DAY_MS = 86_400_000
# One partition per wedding (or user) and hour: even a wedding logging 25 events/s all day
# stays under 100k rows per partition, and newest-first reads walk hours in order, no merging.
BUCKET_MS = 3_600_000
# A statement the driver could not send because the connection's socket buffer was full is
# sent again after a short pause, this many times, before the write counts as failed.
_BUSY_RETRIES = 50
_BUSY_PAUSE_S = 0.02
_KNOWN_PARTITIONS = 100_000
# A locator row's bucket and occurred_at values, each with its length.
_BUCKET_AND_TIME = struct.Struct(">iiiq").pack
_RETRYABLE = (NoHostAvailable, OperationTimedOut, Timeout, Unavailable, ConnectionException, OSError)


def occurred_ms(ev: pb.Event) -> int:
    """The clustering time of an event: occurred_at in whole milliseconds."""
    ts = ev.occurred_at
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def bucket_of(ms: int) -> int:
    """Time bucket (hours since the Unix epoch) of a millisecond timestamp."""
    return ms // BUCKET_MS


class Row(NamedTuple):
    """One stored event as read for a search: clustering key, filter columns, payload."""

    occurred_ms: int
    event_id: str
    severity: int
    outcome: int
    event_type: str
    organization_id: str
    payload: bytes


class _Plan(NamedTuple):
    """What a write sends: partition markers first, then the rows."""

    markers: list[cqlbatch.Chunk]
    rows: list[cqlbatch.Chunk]
    fresh: list[tuple[str, str, int]]
    partitions: list[tuple[str, str, int]]


@dataclass
class WriteStats:
    """What a write touched: the (scope, key, bucket) partitions written."""

    partitions: list[tuple[str, str, int]]


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, _RETRYABLE):
        return StoreUnavailable(f"cassandra: {type(exc).__name__}: {exc}"[:500])
    return PermanentError(f"cassandra: {type(exc).__name__}: {exc}"[:500])


SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""The driver's sockets, with Nagle's algorithm off. The driver writes a request in 4,096-byte
pieces and sets no option of its own: with Nagle's algorithm on, the last piece of any request
over 4 KB waited for Cassandra to acknowledge the one before, which Linux delays by up to 40 ms,
so a batch of ten events took ~45 ms to write against ~1 ms for one (docs/performance.md)."""


class EventStore:
    """Reads and writes audit events; one per process, shared by its tasks."""

    def __init__(self, cluster: Cluster, session: Session, cfg: StoreConfig, urgent: Session | None = None) -> None:
        self._cluster = cluster
        self._session = session
        # Critical writes get their own connections, so they never queue behind bulk batches.
        self._urgent = urgent or session
        self._write_slots = asyncio.Semaphore(cfg.max_write_statements)
        self._cfg = cfg
        ks = cfg.keyspace
        cols = "occurred_at, event_id, severity, outcome, event_type, organization_id, payload"
        p = session.prepare
        marks = "?, ?, ?, ?, ?, ?, ?, ?, ?"
        self._ins_wedding = p(f"INSERT INTO {ks}.events_by_wedding (wedding_id, bucket, {cols}) VALUES ({marks})")
        self._ins_user = p(f"INSERT INTO {ks}.events_by_user (user_id, bucket, {cols}) VALUES ({marks})")
        self._ins_partition = p(f"INSERT INTO {ks}.partitions (scope, key, bucket) VALUES (?, ?, ?)")
        self._ins_locator = p(
            f"INSERT INTO {ks}.events_by_id (id_group, id_block, event_id, user_id, bucket, occurred_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        for prepared in (self._ins_wedding, self._ins_user):
            rowcodec.check_columns(prepared, rowcodec.EVENT_KEY_TYPES + rowcodec.EVENT_VALUE_TYPES)
        rowcodec.check_columns(self._ins_partition, rowcodec.PARTITION_TYPES)
        rowcodec.check_columns(self._ins_locator, rowcodec.LOCATOR_TYPES)
        self._sel_buckets = p(
            f"SELECT bucket FROM {ks}.partitions WHERE scope = ? AND key = ? AND bucket <= ? AND bucket >= ?"
        )
        select = f"SELECT {cols} FROM {ks}"
        self._sel_rows: dict[str, Any] = {}
        self._sel_rows_after: dict[str, Any] = {}
        for scope, table, key in (("w", "events_by_wedding", "wedding_id"), ("u", "events_by_user", "user_id")):
            self._sel_rows[scope] = p(
                f"{select}.{table} WHERE {key} = ? AND bucket = ? AND occurred_at < ? AND occurred_at >= ? LIMIT ?"
            )
            self._sel_rows_after[scope] = p(
                f"{select}.{table} WHERE {key} = ? AND bucket = ?"
                " AND (occurred_at, event_id) < (?, ?) AND (occurred_at) >= (?) LIMIT ?"
            )
        self._sel_locator = p(
            f"SELECT user_id, bucket, occurred_at FROM {ks}.events_by_id"
            " WHERE id_group = ? AND id_block = ? AND event_id = ?"
        )
        self._sel_payload = p(
            f"SELECT payload FROM {ks}.events_by_user"
            " WHERE user_id = ? AND bucket = ? AND occurred_at = ? AND event_id = ?"
        )
        self._sel_calendar = p(f"SELECT wedding_id, wedding_date, timezone FROM {ks}.wedding_calendar")
        self._ins_calendar = p(
            f"INSERT INTO {ks}.wedding_calendar (wedding_id, wedding_date, timezone) VALUES (?, ?, ?)"
        )
        self._known: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._consistency = ConsistencyLevel.name_to_value[cfg.consistency]

    @classmethod
    def connect(
        cls,
        cfg: StoreConfig,
        *,
        executor_threads: int = 2,
        sockopts: Sequence[tuple[int, int, int]] | None = SOCKET_OPTIONS,
    ) -> EventStore:
        """Connect to the cluster and prepare statements (the schema must exist). ``sockopts``
        None leaves the driver's socket defaults (``bench.write_path`` compares the two)."""
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.name_to_value[cfg.consistency],
            request_timeout=10.0,
        )
        cluster = Cluster(
            list(cfg.hosts),
            port=cfg.port,
            protocol_version=4,
            executor_threads=executor_threads,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=5,
            control_connection_timeout=5,
            # Reconnect within seconds after Cassandra restarts (the default backs off to minutes).
            reconnection_policy=ExponentialReconnectionPolicy(0.5, 4.0),
            # A connection reset while idle is found by the next heartbeat; until then every
            # request fails on the dead connection (with the default 30 s, a service stayed
            # unavailable ~50 s after a 3 s outage; with 2 s, ~1 s).
            idle_heartbeat_interval=2,
            sockopts=sockopts,
        )
        try:
            session = cluster.connect()
            return cls(cluster, session, cfg, cluster.connect())
        except Exception as exc:
            cluster.shutdown()
            raise _translate(exc) from exc

    @property
    def session(self) -> Session:
        return self._session

    @property
    def urgent_session(self) -> Session:
        """The critical lane's own connections."""
        return self._urgent

    def close(self) -> None:
        self._cluster.shutdown()

    async def _run(
        self,
        statements: Sequence[Any],
        *,
        fetch: bool = False,
        build: Callable[[Any], Any] | None = None,
        session: Session | None = None,
        slots: asyncio.Semaphore | None = None,
    ) -> list[Any]:
        """Execute statements concurrently; return their rows (when ``fetch``) in order.

        ``build`` turns each item into a statement just before it is sent. With ``slots``, each
        statement holds a slot until Cassandra answers it, which bounds the work queued in the
        driver and Cassandra (where a critical write would wait behind it), and the loop yields
        between statements so one large write does not hold up a critical one.
        """
        session = session or self._session
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        results: list[Any] = [None] * len(statements)
        if not statements:
            return results
        lock = threading.Lock()
        left = [len(statements)]
        first_error: list[BaseException] = []

        busy_left = [_BUSY_RETRIES]

        def settle(index: int, value: Any, error: BaseException | None, statement: Any) -> None:
            if error is not None and _never_sent(error):
                # Nothing reached Cassandra: the driver's socket buffer was full. Send it again
                # shortly (on the loop's thread) instead of failing the whole write.
                with lock:
                    again = busy_left[0] > 0
                    busy_left[0] -= 1
                if again:
                    loop.call_soon_threadsafe(resend, index, statement)
                    return
            if isinstance(statement, BatchStatement):
                # The driver's ResponseFuture is in a reference cycle (its timer holds one of its
                # bound methods), so what it references is freed only by the cyclic garbage
                # collector: emptying the answered batch frees its rows now.
                statement.clear()
            if slots is not None:
                loop.call_soon_threadsafe(slots.release)
            with lock:
                if error is not None and not first_error:
                    first_error.append(error)
                results[index] = value
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(_finish, done, first_error[0] if first_error else None)

        def send(index: int, statement: Any) -> None:
            try:
                if isinstance(statement, cqlbatch.EncodedBatch):
                    future = cqlbatch.execute(session, statement, 10.0)
                else:
                    future = session.execute_async(statement, timeout=10.0)
            except Exception as exc:
                settle(index, None, exc, statement)
                return
            future.add_callbacks(
                lambda rows: settle(index, rows if fetch else None, None, statement),
                lambda exc: settle(index, None, exc, statement),
            )

        def resend(index: int, statement: Any) -> None:
            # Still counted in ``left`` and still holding its slot: ``done`` waits for it.
            loop.call_later(_BUSY_PAUSE_S, send, index, statement)

        for index, item in enumerate(statements):
            if slots is not None:
                # Yield first, then take a slot with no await between taking it and sending: a
                # task cancelled here must not leave with a slot (only settle gives it back).
                await asyncio.sleep(0)
                await slots.acquire()
            try:
                statement = item if build is None else build(item)
            except BaseException:
                if slots is not None:
                    slots.release()
                raise
            send(index, statement)
        try:
            await done
        except Exception as exc:
            raise _translate(exc) from exc
        return results

    async def write(self, events: Iterable[pb.Event], *, urgent: bool = False) -> WriteStats:
        """Durably write events to both tables, their locators and partitions; idempotent.

        Rows are grouped by the replicas that own them and sent as unlogged batches of up to
        ``cqlbatch.BATCH_ROWS`` rows and ``max_batch_bytes`` bytes (the Spark Cassandra Connector's
        ``replica_set`` grouping): each batch is applied by one coordinator that owns every row
        in it, so it costs one request instead of one per row, without the cross-node fan-out that makes multi-partition
        batches an anti-pattern. Rows of one partition travel together up to the byte bound, and
        partitions new to this process are indexed before their rows are written. Values are
        encoded by :mod:`auditmesh.rowcodec`. ``urgent`` writes (the critical lane) use their
        own connections.
        """
        plan = self.encode(events)
        run = functools.partial(self._run, build=self._batch)
        if urgent:
            run = functools.partial(run, session=self._urgent)
        else:
            run = functools.partial(run, slots=self._write_slots)
        if plan.markers:
            # A partition is listed before any of its rows is written: a write that fails
            # part-way (and is resent) never leaves rows that a search cannot reach.
            await run(plan.markers)
        await run(plan.rows)
        for marker in plan.fresh:
            self._known[marker] = None
            if len(self._known) > _KNOWN_PARTITIONS:
                self._known.popitem(last=False)
        return WriteStats(partitions=plan.partitions)

    def encode(self, events: Iterable[pb.Event]) -> _Plan:
        """The batches (routing key, statements) that write ``events``; sends nothing.

        Each row is encoded once, straight to the bytes it takes in the BATCH message: its
        partition's statement head (statement id and key values) followed by its other
        values, of which an event's seven are encoded once for its two table rows. The
        driver's own encoding of a batch wrote ~9 values per row one call at a time.
        """
        weddings: dict[tuple[str, int], cqlbatch.Partition] = {}
        users: dict[tuple[str, int], cqlbatch.Partition] = {}
        locators: dict[tuple[str, int], cqlbatch.Partition] = {}
        wedding_query, user_query = self._ins_wedding.query_id, self._ins_user.query_id
        locator_query = self._ins_locator.query_id
        int64, int32, value = rowcodec.int64, rowcodec.int32, rowcodec.value
        event_tail, locator_partition = rowcodec.event_tail, event_ids.locator_partition
        new = cqlbatch.partition
        for ev in events:
            ts = ev.occurred_at
            ms = ts.seconds * 1000 + ts.nanos // 1_000_000
            bucket = ms // BUCKET_MS
            event_id = ev.event_id.encode()
            tail = event_tail(ms, ev, event_id, ev.SerializeToString())
            wedding_id = ev.wedding_id
            if wedding_id:
                partition = weddings.get((wedding_id, bucket))
                if partition is None:
                    partition = weddings[(wedding_id, bucket)] = new(wedding_query, 9, wedding_id, int32(bucket))
                partition.rows.append(partition.head + tail)
            user_id = ev.user_id
            partition = users.get((user_id, bucket))
            if partition is None:
                partition = users[(user_id, bucket)] = new(user_query, 9, user_id, int32(bucket))
            partition.rows.append(partition.head + tail)
            where = locator_partition(ev.event_id)
            partition = locators.get(where)
            if partition is None:
                partition = locators[where] = new(locator_query, 6, where[0], int64(where[1]))
            located = _BUCKET_AND_TIME(4, bucket, 8, ms)
            partition.rows.append(b"".join((partition.head, value(event_id), value(user_id.encode()), located)))
        groups: dict[Any, list[cqlbatch.Run]] = {}
        markers: dict[Any, list[cqlbatch.Run]] = {}
        fresh: list[tuple[str, str, int]] = []
        single_node = len(self._cluster.metadata.all_hosts()) <= 1
        insert_marker = self._ins_partition.query_id
        for scope, partitions in (("w", weddings), ("u", users)):
            scope_bytes = scope.encode()
            for (key, bucket), partition in partitions.items():
                route = partition.route
                owner = None if single_node else self._replicas(route)
                groups.setdefault(owner, []).append((route, partition.rows))
                marker = (scope, key, bucket)
                if marker not in self._known:
                    fresh.append(marker)
                    row = rowcodec.statement_head(insert_marker, 3, scope_bytes, *partition.key)
                    markers.setdefault(owner, []).append((route, [row]))
        for partition in locators.values():
            route = partition.route
            groups.setdefault(None if single_node else self._replicas(route), []).append((route, partition.rows))
        written = [("w", key, bucket) for key, bucket in weddings]
        written += [("u", key, bucket) for key, bucket in users]
        return _Plan(self._chunks(markers), self._chunks(groups), fresh, written)

    def _chunks(self, groups: dict[Any, list[cqlbatch.Run]]) -> list[cqlbatch.Chunk]:
        """Each group's rows cut into batches of at most ``cqlbatch.BATCH_ROWS`` rows and
        ``max_batch_bytes`` bytes (a single larger row still goes alone)."""
        return [chunk for runs in groups.values() for chunk in cqlbatch.byte_chunks(runs, self._cfg.max_batch_bytes)]

    def backfill_locators(self, on_progress: Callable[[int], None] | None = None, *, page: int = 5000) -> int:
        """Write the ``events_by_id`` row of every event in ``events_by_user``: for events stored
        before that table existed (it replaced an index). A full scan, idempotent; returns the
        number of events scanned."""
        scan = SimpleStatement(
            f"SELECT user_id, bucket, occurred_at, event_id FROM {self._cfg.keyspace}.events_by_user",
            fetch_size=page,
        )
        scanned = 0
        locators: dict[tuple[str, int], cqlbatch.Partition] = {}
        query_id = self._ins_locator.query_id
        for row in self._session.execute(scan, timeout=60):
            where = event_ids.locator_partition(row.event_id)
            partition = locators.get(where)
            if partition is None:
                partition = locators[where] = cqlbatch.partition(query_id, 6, where[0], rowcodec.int64(where[1]))
            ids = rowcodec.value(row.event_id.encode()) + rowcodec.value(row.user_id.encode())
            located = _BUCKET_AND_TIME(4, row.bucket, 8, _ms(row.occurred_at))
            partition.rows.append(b"".join((partition.head, ids, located)))
            scanned += 1
            if scanned % page == 0:
                self._write_locators(locators)
                locators = {}
                if on_progress is not None:
                    on_progress(scanned)
        self._write_locators(locators)
        if on_progress is not None:
            on_progress(scanned)
        return scanned

    def _write_locators(self, locators: dict[tuple[str, int], cqlbatch.Partition]) -> None:
        chunks = self._chunks({None: [(p.route, p.rows) for p in locators.values()]})
        for start in range(0, len(chunks), 16):  # 16 batches at a time
            sent = [cqlbatch.execute(self._session, self._batch(c), 60.0) for c in chunks[start : start + 16]]
            for future in sent:
                future.result()

    def _replicas(self, route: bytes) -> frozenset[Any]:
        return frozenset(self._cluster.metadata.get_replicas(self._cfg.keyspace, route))

    def _batch(self, chunk: cqlbatch.Chunk) -> cqlbatch.EncodedBatch:
        """An unlogged batch of encoded rows, routed to the owner of its first row."""
        return cqlbatch.EncodedBatch(chunk, self._cfg.keyspace, self._consistency)

    async def buckets(self, scope: str, key: str, newest: int, oldest: int) -> list[int]:
        """Time buckets holding data for a wedding ("w") or user ("u"), newest first."""
        stmt = self._sel_buckets.bind((scope, key, newest, oldest))
        stmt.fetch_size = None  # every bucket of the range (up to 9,600), not the driver's first page
        (rows,) = await self._run([stmt], fetch=True)
        return [r.bucket for r in rows]

    async def rows(
        self,
        scope: str,
        key: str,
        bucket: int,
        *,
        end_ms: int,
        start_ms: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Row]:
        """Rows of one partition with start_ms <= occurred < end_ms, newest first, after a cursor."""
        if after is None:
            stmt = self._sel_rows[scope].bind((key, bucket, end_ms, start_ms, limit))
        else:
            stmt = self._sel_rows_after[scope].bind((key, bucket, after[0], after[1], start_ms, limit))
        (rows,) = await self._run([stmt], fetch=True)
        return [
            Row(
                _ms(r.occurred_at),
                r.event_id,
                r.severity or 0,
                r.outcome or 0,
                r.event_type or "",
                r.organization_id or "",
                r.payload,
            )
            for r in rows
        ]

    async def get(self, event_id: str) -> bytes | None:
        """One event by id: its locator row, then the row it points to."""
        group, block = event_ids.locator_partition(event_id)
        (located,) = await self._run([self._sel_locator.bind((group, block, event_id))], fetch=True)
        where = list(located)
        if not where:
            return None
        at = where[0]
        (rows,) = await self._run(
            [self._sel_payload.bind((at.user_id, at.bucket, at.occurred_at, event_id))], fetch=True
        )
        found = list(rows)
        return bytes(found[0].payload) if found else None

    async def calendar(self) -> list[CalendarEntry]:
        stmt = self._sel_calendar.bind(())
        stmt.fetch_size = None  # the whole calendar (5,000+ weddings), not the driver's first page of 5,000
        (rows,) = await self._run([stmt], fetch=True)
        return [CalendarEntry(r.wedding_id, r.wedding_date.date(), r.timezone or "UTC") for r in rows]

    async def put_calendar(self, entries: Sequence[CalendarEntry]) -> None:
        await self._run([self._ins_calendar.bind((e.wedding_id, e.wedding_date, e.timezone)) for e in entries])


_EPOCH = dt.datetime(1970, 1, 1)
_ONE_MS = dt.timedelta(milliseconds=1)


def _ms(value: dt.datetime) -> int:
    return (value.replace(tzinfo=None) - _EPOCH) // _ONE_MS


def _never_sent(error: BaseException) -> bool:
    """Whether the driver gave up before sending: every host's connection was busy."""
    if not isinstance(error, NoHostAvailable):
        return False
    errors = error.errors or {}
    return bool(errors) and all(isinstance(e, ConnectionBusy) for e in errors.values())


def _finish(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
