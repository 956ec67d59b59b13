"""``AuditClient``: the SDK backend services embed to log security events.

    client = AuditClient("ingest:50051", source_service="payments")
    client.log("payment.refund", user_id="u1", organization_id="o1", wedding_id="w1",
               severity=pb.P1_HIGH, outcome=pb.OUTCOME_SUCCESS)
    client.flush()          # wait until everything logged so far is acknowledged
    client.close()

``log()`` never touches the network: it appends a tuple to an in-memory buffer and returns the
event id (client-made: a random producer prefix plus a sequence number, the idempotency key).
Tasks on the process's one SDK event loop (:mod:`auditmesh.sdk_loop`, a background thread that
every client of the process shares) turn the buffer into batches (by size and time;
P0 events are sent at once, ahead of others) and send them over one or more bidi streams to
ingest. Every batch is kept until its ack arrives; after a broken stream or a RETRY ack it is
resent unchanged (same event ids), with jittered backoff. Per-event rejections go to the
``on_rejected`` callback (called on the SDK thread, which all clients share: keep it quick)
and to the counters in :class:`ClientStats`.

Bounds: at most ``max_pending_events`` events and ``max_pending_bytes`` bytes wait in the SDK.
Past that, ``log()`` drops non-critical events (counted in ``dropped``, warned once per
interval); P0_CRITICAL events are never dropped.

The client is safe to use from any number of threads and from asyncio code (``log`` never
blocks; use ``aflush``/``aclose`` in coroutines). Any number of clients may be opened and
closed in any threads: they share one loop and thread, and closing one ends its own tasks only.

Processes (docs/sdk.md says the same for users):

- fork: before ``os.fork()`` the SDK thread closes its streams (their unacknowledged batches
  stay queued), so that no gRPC call is under way while the process is copied; the parent then
  opens new ones and resends. A child starts with an empty buffer, its own id prefix and
  counters, and a new SDK loop, thread and channel on its first use, on gRPC's synchronous stack
  (:class:`~auditmesh.sdk_transport.ThreadedStream`: grpc.aio does not survive a fork): whatever was pending at the
  fork is the parent's to deliver, so nothing is sent twice from two processes.
- failover: with several targets (a list, ``"host1:port,host2:port"``, or a ``dns:///name:port``
  resolving to several addresses, balanced by gRPC's round_robin policy), a stream that breaks
  is reopened at once on the next target not marked down, and its unacknowledged batches are
  resent there; the target that failed is marked down for a while (doubling up to 5 s) and
  marked up again by its next ack. Only when every target is down does the worker back off.
- spool (opt-in, ``spool_dir``): the SDK thread appends every batch it makes to a file in that
  directory and forgets it once acknowledged (:mod:`auditmesh.sdk_spool`); a client started on
  the same directory resends what an earlier process left there. ``log()`` never touches it.
- exit: every client still open is closed at interpreter exit (``atexit``, and also when a
  ``multiprocessing`` child ends, which skips ``atexit``), waiting at most ``exit_timeout``
  seconds for acknowledgements over the streams it has (a lost one is not reopened then);
  what is still unacknowledged is lost, and a warning says how many events.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from auditmesh import sdk_loop
from auditmesh.event_ids import new_client_prefix
from auditmesh.sdk_spool import Spool
from auditmesh.sdk_trace import BatchTracer
from auditmesh.sdk_transport import Connection, open_stream
from auditpb.v1 import audit_pb2 as pb

__all__ = ["AuditClient", "ClientStats"]

log = logging.getLogger("auditmesh.client")
_jitter = random.Random()
"""Backoff jitter from a generator of this module's own: an application's (or a test's)
use of the global ``random`` state is neither disturbed nor seen."""
_P0 = pb.P0_CRITICAL
_DROP_WARN_INTERVAL_S = 10.0
_FORK_QUIESCE_S = 5.0  # how long a fork waits for the SDK thread to close its streams
_JOIN_S = 2.0  # how long close() waits for the client's tasks to end once its work is settled
_WEDDING_DAY_S = 600.0
"""How long a wedding that ingest named as today's (``BatchAck.wedding_day``) has its events
batched apart, unless a later ack names it again."""
_Item = tuple[Any, ...]

# Every client of this process, for the fork and exit hooks at the end of this module.
_clients: weakref.WeakSet[AuditClient] = weakref.WeakSet()
# What a forked child inherited from its parent's clients (tasks, channels, batches):
# kept referenced and never touched, so that no destructor acts on the parent's connections.
_inherited: list[object] = []


@dataclass(frozen=True)
class ClientStats:
    """Counters since the client started. ``pending`` = logged but not yet settled."""

    logged: int
    acked: int
    rejected: int
    resent: int
    dropped: int
    pending: int
    reconnects: int
    failovers: int = 0
    """Streams reopened on another target right after one broke."""
    spooled: int = 0
    """Events in the spool now (written, not yet acknowledged)."""
    spool_recovered: int = 0
    """Events found in the spool at start (left by an earlier process) and resent."""
    spool_corrupt: int = 0
    """Records of a truncated or corrupt spool tail skipped at start."""
    spool_overflow: int = 0
    """Non-critical batches not spooled because the spool was at its byte bound."""


class _Target:
    """One ingest target and its health as the client saw it."""

    __slots__ = ("address", "down_until", "failures")

    def __init__(self, address: str) -> None:
        self.address = address
        self.down_until = 0.0  # monotonic time until which no new stream is opened to it
        self.failures = 0  # consecutive failed streams

    def failed(self) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + min(0.5 * 2 ** (self.failures - 1), 5.0)

    def answered(self) -> None:
        self.failures = 0
        self.down_until = 0.0


def _split_targets(target: str | Sequence[str]) -> list[str]:
    parts = target.split(",") if isinstance(target, str) else list(target)
    targets = [t.strip() for t in parts if t.strip()]
    if not targets:
        raise ValueError("AuditClient needs at least one target")
    return targets


class _Batch:
    __slots__ = ("attempts", "count", "critical", "data", "done", "first_ns", "msg", "rank", "size", "span", "spooled")

    def __init__(
        self,
        msg: pb.EventBatch,
        critical: bool,
        first_ns: int,
        done: asyncio.Future[None],
        rank: int = 0,
        data: bytes | None = None,
    ) -> None:
        self.msg = msg
        # The serialized batch, made once: what the stream sends (every attempt) and the spool keeps.
        self.data = msg.SerializeToString() if data is None else data
        self.count = len(msg.events)
        self.size = len(self.data)
        self.critical = critical
        self.rank = rank  # place in the outbox: critical, wedding day, the rest
        self.first_ns = first_ns
        self.done = done
        self.attempts = 0
        self.span: Any = None
        self.spooled = False


class AuditClient:
    """Non-blocking, batching, at-least-once audit event producer."""

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        *,
        source_service: str = "",
        batch_size: int = 500,
        linger_ms: float = 20.0,
        streams: int = 1,
        max_pending_events: int = 200_000,
        max_pending_bytes: int = 128 * 1024 * 1024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        batches_in_flight: int = 32,
        on_rejected: Callable[[pb.Rejection], None] | None = None,
        record_ack_latency: bool = False,
        exit_timeout: float = 5.0,
        tracer_provider: Any = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        # ``token`` goes to ingest as ``authorization: Bearer <token>`` metadata; ``credentials``
        # (grpc.ssl_channel_credentials with the mesh's CA) make the stream TLS.
        self._targets = [_Target(t) for t in _split_targets(target)]
        self.target = self._targets[0].address  # the first target (all of them: ``targets``)
        self._auth = Connection(token, credentials)
        self._source = source_service
        self._batch_size = batch_size
        self._linger_s = linger_ms / 1000
        self._streams = streams
        self._max_events = max_pending_events
        self._max_bytes = max_pending_bytes
        self._max_batch_bytes = max_batch_bytes
        self._window = batches_in_flight
        self._on_rejected = on_rejected
        self._record_ack_latency = record_ack_latency
        self._exit_timeout = exit_timeout
        # With a tracer provider (given, or the application's global one), each batch gets an
        # ``sdk.batch`` span whose traceparent travels with it, and log() is timed for it.
        self._batch_tracer = BatchTracer.create(tracer_provider)
        self._closed = False
        self._exiting = False  # set by the exit hook: no new stream from then on
        # Opened (and what an earlier process left read) here, so that a spool another process
        # owns is an error to the caller; written only by the SDK thread.
        self._spool = Spool(spool_dir, spool_max_bytes) if spool_dir is not None else None
        self._reset()
        _clients.add(self)
        self._start()

    def _reset(self) -> None:
        """The state of a client that has logged nothing: at construction, and in a forked child."""
        self._prefix = new_client_prefix()
        self._seq = itertools.count(1)
        self._normal: deque[_Item] = deque()
        self._critical: deque[_Item] = deque()
        # Events of weddings that ingest said are today, batched apart from the rest so that
        # their acks never wait for bulk events' writes (ingest writes each lane on its own).
        self._wedding_day: deque[_Item] = deque()
        self._today: dict[str, float] = {}  # wedding id -> until when (monotonic)
        self._woken = False
        self._held: _Item | None = None  # the first event of a partial batch held back a tick
        self._unsettled_events = 0
        self._unsettled_bytes = 0
        self._open: set[_Batch] = set()
        self._batch_ids = itertools.count(1)
        self.ack_latency_ns: list[int] | None = [] if self._record_ack_latency else None
        self._acked = self._rejected = self._resent = self._dropped = self._reconnects = self._failovers = 0
        self._spooled = self._spool_recovered = 0
        self._last_drop_warning = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_max_ns = 0
        # The client's main task on the SDK loop (its batcher and streams run under it).
        self._task: concurrent.futures.Future[None] | None = None
        self._start_lock = threading.Lock()
        self._workers: list[asyncio.Task[None]] = []

    def _start(self) -> None:
        """Start the client's tasks on the process's SDK loop (once; in a forked child, on first
        use), and wait until its streams are being opened."""
        with self._start_lock:
            if self._task is not None or self._closed:
                return
            ready = threading.Event()
            self._task = asyncio.run_coroutine_threadsafe(self._main(ready), sdk_loop.get_loop())
            self._task.add_done_callback(lambda task: _task_ended(task, ready))
            if not sdk_loop.in_loop_thread():  # made from a callback on the loop: it cannot wait
                ready.wait()
        _watch_exit()

    # ---- the caller's side -------------------------------------------------------------------

    def log(
        self,
        event_type: str,
        *,
        user_id: str,
        organization_id: str = "",
        wedding_id: str = "",
        severity: int = pb.P2_MEDIUM,
        outcome: int = pb.OUTCOME_SUCCESS,
        resource_type: str = "",
        resource_id: str = "",
        source_ip: str = "",
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        occurred_at_ns: int | None = None,
    ) -> str:
        """Queue one event and return its id; never blocks, never raises for load."""
        if self._task is None:
            self._start()
        timed = self._batch_tracer is not None  # the slowest call per batch goes on its span
        started = time.perf_counter_ns() if timed else 0
        seq = next(self._seq)
        if event_id is None:
            event_id = f"{self._prefix}{seq:x}"
        item = (
            event_id,
            occurred_at_ns or time.time_ns(),
            event_type,
            user_id,
            organization_id,
            wedding_id,
            severity,
            outcome,
            resource_type,
            resource_id,
            source_ip,
            dict(attributes) if attributes else None,  # a copy: the caller may reuse its dict
            self._batch_tracer.caller_trace_id() if timed else "",  # type: ignore[union-attr]
        )
        if self._closed:
            self._drop(closed=True)
        elif severity == _P0:
            self._critical.append(item)
            self._wake()
        elif len(self._normal) + len(self._wedding_day) + self._unsettled_events >= self._max_events:
            self._drop(closed=False)
        elif wedding_id and wedding_id in self._today:
            self._wedding_day.append(item)
        else:
            self._normal.append(item)
            if len(self._normal) >= self._batch_size and not self._woken:
                self._wake()
        if timed:
            spent = time.perf_counter_ns() - started
            if spent > self._log_max_ns:
                self._log_max_ns = spent
        return event_id

    def log_event(self, event: pb.Event) -> str:
        """Queue a ready-made Event (its event_id and occurred_at are kept when set)."""
        ts = event.occurred_at
        return self.log(
            event.event_type,
            user_id=event.user_id,
            organization_id=event.organization_id,
            wedding_id=event.wedding_id,
            severity=event.severity,
            outcome=event.outcome,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            source_ip=event.source_ip,
            attributes=dict(event.attributes) or None,
            event_id=event.event_id or None,
            occurred_at_ns=(ts.seconds * 1_000_000_000 + ts.nanos) or None,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event logged before this call is acknowledged or rejected; False if
        some were still unsettled after ``timeout`` seconds (they stay queued)."""
        loop = self._loop
        if loop is None or not self._running() or sdk_loop.in_loop_thread():
            return self.stats.pending == 0  # not started in this process, closed, or on the loop itself
        try:
            future = asyncio.run_coroutine_threadsafe(self._flush(), loop)
        except RuntimeError:  # the loop closed meanwhile
            return self.stats.pending == 0
        try:
            future.result(timeout)
            return True
        except concurrent.futures.TimeoutError:
            future.cancel()
            return False

    async def aflush(self) -> None:
        """``flush`` for coroutines; bound it with ``asyncio.timeout`` as needed."""
        if self._loop is not None and self._running():
            await asyncio.wrap_future(self._submit(self._flush()))

    def close(self, timeout: float = 30.0) -> bool:
        """Flush (at most ``timeout`` seconds), then end the client's tasks (the process's SDK loop
        and the other clients on it go on). Returns False, and warns,
        if events were left unacknowledged: they are lost. Safe to call twice (the second call says
        whether nothing is pending), and in a forked child that never used the client. Events
        logged after close are dropped and counted in ``stats.dropped``."""
        if self._closed:
            return self.stats.pending == 0
        flushed = self.flush(timeout)
        with self._start_lock:  # a log() in another thread cannot start the client again
            self._closed = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not task.done():
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # the loop already ended
            if not sdk_loop.in_loop_thread():
                concurrent.futures.wait([task], _JOIN_S)
        if self._spool is not None and (task is None or task.done()):
            self._spool.close()  # what is unacknowledged stays there for the next client
        if not flushed:
            log.warning(
                "audit client to %s closed with %d events unacknowledged after %.1fs: they are lost",
                self.target,
                self.stats.pending,
                timeout,
            )
        return flushed

    async def aclose(self) -> bool:
        """``close`` for coroutines, without blocking the caller's event loop."""
        return await asyncio.to_thread(self.close)

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ClientStats:
        logged = int(repr(self._seq)[6:-1]) - 1  # itertools.count has no peek; its repr is "count(N)"
        return ClientStats(
            logged=logged,
            acked=self._acked,
            rejected=self._rejected,
            resent=self._resent,
            dropped=self._dropped,
            pending=len(self._normal) + len(self._wedding_day) + len(self._critical) + self._unsettled_events,
            reconnects=self._reconnects,
            failovers=self._failovers,
            spooled=self._spooled,
            spool_recovered=self._spool_recovered,
            spool_corrupt=self._spool.corrupt_records if self._spool is not None else 0,
            spool_overflow=self._spool.overflow_batches if self._spool is not None else 0,
        )

    @property
    def targets(self) -> list[str]:
        return [t.address for t in self._targets]

    def target_health(self) -> dict[str, bool]:
        """Each target: True unless its last stream failed and it is still marked down."""
        now = time.monotonic()
        return {t.address: t.down_until <= now for t in self._targets}

    def _running(self) -> bool:
        """Whether the client's tasks run (started in this process and not ended by close)."""
        task = self._task
        return task is not None and not task.done()

    def _wake(self) -> None:
        self._woken = True
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wakeup.set)

    def _drop(self, *, closed: bool) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARN_INTERVAL_S:
            self._last_drop_warning = now
            if closed:
                log.warning("audit client closed: %d events logged after close() dropped so far", self._dropped)
            else:
                log.warning(
                    "audit buffer full (%d events pending): %d non-critical events dropped so far",
                    self._max_events,
                    self._dropped,
                )

    def _submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # ---- the SDK thread ----------------------------------------------------------------------

    async def _main(self, ready: threading.Event) -> None:
        self._wakeup = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._outbox: asyncio.PriorityQueue[tuple[int, int, _Batch]] = asyncio.PriorityQueue()
        self._loop = asyncio.get_running_loop()  # last: from here on log() may wake the loop
        self._resend_spooled()
        self._resume_streams()
        batcher = asyncio.create_task(self._batcher())
        # Let the workers open their first streams before the constructor returns: a process
        # that exits at once must not start gRPC's threads at exit (see _stream_worker).
        await asyncio.sleep(0)
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            workers, self._workers = self._workers, []
            for task in [batcher, *workers]:
                task.cancel()
            await asyncio.gather(batcher, *workers, return_exceptions=True)

    def _resend_spooled(self) -> None:
        """Queue what an earlier process left in the spool, with its batch and event ids."""
        if self._spool is None:
            return
        recovered, self._spool.recovered = self._spool.recovered, []
        assert self._loop is not None
        for spooled in recovered:
            batch = _Batch(
                pb.EventBatch.FromString(spooled.data),
                spooled.critical,
                time.time_ns(),
                self._loop.create_future(),
                data=spooled.data,
            )
            batch.spooled = True
            self._spooled += batch.count
            self._spool_recovered += batch.count
            self._enqueue(batch, spool=False)
        if recovered:
            log.info("audit client: resending %d events left in the spool", self._spool_recovered)

    def _resume_streams(self) -> None:
        if not self._workers and not self._stop_event.is_set():
            self._workers = [asyncio.create_task(self._stream_worker(i)) for i in range(self._streams)]

    async def _pause_streams(self) -> None:
        """End every stream and close its channel; their unacknowledged batches are queued again."""
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # ---- fork ----------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """In the forking thread: have the SDK thread close its streams and channels, so that no
        gRPC call or channel of the SDK is live while the process is copied."""
        loop = self._loop
        if loop is None or not self._running() or sdk_loop.in_loop_thread() or self._closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._pause_streams(), loop).result(_FORK_QUIESCE_S)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("audit client: streams not closed within %.0fs of a fork", _FORK_QUIESCE_S)

    def _after_fork_in_parent(self) -> None:
        loop = self._loop
        if loop is not None and not self._closed:
            try:
                loop.call_soon_threadsafe(self._resume_streams)
            except RuntimeError:
                pass  # the loop ended meanwhile (closed)

    def _after_fork_in_child(self) -> None:
        """Start over empty: what was pending at the fork is the parent's to deliver. The parent's
        SDK thread does not exist here; its tasks and batches stay referenced but are never used."""
        _inherited.append(
            (self._loop, self._task, self._workers, self._open, getattr(self, "_outbox", None), self._spool)
        )
        closed = self._closed
        self._reset()
        self._closed = closed
        self._spool = None  # the parent owns the spool (and its lock); a child does not spool

    async def _batcher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._linger_s)
                tick = False
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                tick = True
            self._wakeup.clear()
            self._woken = False
            self._drain(force=False, tick=tick)

    def _drain(self, *, force: bool, tick: bool = False) -> None:
        """Turn buffered events into batches on the outbox; critical ones first.

        Full batches go at once. A partial batch goes when its first event was already pending
        at the previous linger tick, so it has waited between one and two linger periods: a
        producer that keeps the buffer busy sends full batches only, rather than whatever
        accumulated since the last tick.
        """
        while self._critical:
            self._enqueue(self._build(self._critical, critical=True))
        wedding_day = self._wedding_day
        while wedding_day and (force or tick or len(wedding_day) >= self._batch_size):
            self._enqueue(self._build(wedding_day, critical=False, rank=1))  # within one linger period
        normal = self._normal
        while normal and (force or self._unsettled_bytes < self._max_bytes):
            if not force and len(normal) < self._batch_size:
                if not tick:
                    break
                if normal[0] is not self._held:
                    self._held = normal[0]
                    break
            self._enqueue(self._build(normal, critical=False, rank=2))
        if not normal:
            self._held = None

    def _build(self, source: deque[_Item], *, critical: bool, rank: int = 0) -> _Batch:
        """The next batch from ``source``: up to ``batch_size`` events, at most ``max_batch_bytes``.

        Batches are sized once, as a whole, by serializing them (the bytes are what the stream
        sends): only a batch over ``max_batch_bytes`` (events of several kilobytes) is built again
        event by event, measuring each (:meth:`_fit`)."""
        msg = pb.EventBatch(batch_id=f"{self._prefix}b{next(self._batch_ids)}", client_dropped=self._dropped)
        popleft = source.popleft
        items = [popleft() for _ in range(min(len(source), self._batch_size))]
        _add_events(msg.events, items, self._source)
        first_ns = items[0][1] if items else 0
        serialized = msg.SerializeToString()
        data: bytes | None = serialized
        if len(serialized) > self._max_batch_bytes:
            source.extendleft(reversed(items))
            del msg.events[:]
            first_ns, data = self._fit(msg, source), None
        span = None
        if self._batch_tracer is not None and msg.events:
            log_max_us, self._log_max_ns = self._log_max_ns // 1000, 0
            span, msg.traceparent = self._batch_tracer.start(
                critical=critical, events=len(msg.events), log_max_us=log_max_us
            )
            data = None  # serialized again with its traceparent
        assert self._loop is not None
        batch = _Batch(msg, critical, first_ns, self._loop.create_future(), rank, data)
        batch.span = span
        return batch

    def _fit(self, msg: pb.EventBatch, source: deque[_Item]) -> int:
        """Fill ``msg`` from ``source`` one event at a time, up to ``max_batch_bytes``; refuse an
        event larger than that on its own. Returns the batch's first event's time."""
        events = msg.events
        size = first_ns = 0
        too_large: list[pb.Rejection] = []
        while source and len(events) < self._batch_size and size < self._max_batch_bytes:
            item = source.popleft()
            _add_events(events, (item,), self._source)
            event_size = events[-1].ByteSize()
            if event_size > self._max_batch_bytes:
                # It can never be sent (and ingest refuses any event near this size): resending
                # it forever would block everything behind it.
                del events[-1]
                too_large.append(
                    pb.Rejection(
                        event_id=item[0],
                        field="event",
                        reason=f"{event_size} bytes, more than max_batch_bytes ({self._max_batch_bytes})",
                    )
                )
                continue
            if len(events) > 1 and size + event_size > self._max_batch_bytes:
                del events[-1]
                source.appendleft(item)  # the first of the next batch
                break
            first_ns = first_ns or item[1]
            size += event_size
        if too_large:
            self._report_rejected(too_large)
        return first_ns

    def _enqueue(self, batch: _Batch, *, spool: bool = True) -> None:
        if not batch.count:
            return  # every event of it was too large to send
        if spool and self._spool is not None:
            try:
                batch.spooled = self._spool.append(batch.msg.batch_id, batch.critical, batch.data)
            except OSError:
                log.exception("audit client: spool write failed; the batch is kept in memory only")
            if batch.spooled:
                self._spooled += batch.count
        self._open.add(batch)
        self._unsettled_events += batch.count
        self._unsettled_bytes += batch.size
        self._outbox.put_nowait((batch.rank, next(self._batch_ids), batch))

    def _requeue(self, batch: _Batch) -> None:
        if batch in self._open:
            self._resent += batch.count
            self._outbox.put_nowait((batch.rank, next(self._batch_ids), batch))

    def _settle(self, batch: _Batch) -> None:
        if batch not in self._open:
            return
        self._open.discard(batch)
        self._unsettled_events -= batch.count
        self._unsettled_bytes -= batch.size
        if batch.spooled and self._spool is not None:
            self._spooled -= batch.count
            try:
                self._spool.ack(batch.msg.batch_id)
            except OSError:
                log.exception("audit client: spool ack failed; the batch may be resent by a later client")
        if self.ack_latency_ns is not None:
            self.ack_latency_ns.append(time.time_ns() - batch.first_ns)
        if batch.span is not None:
            BatchTracer.end(batch.span, attempts=batch.attempts)
        if not batch.done.done():
            batch.done.set_result(None)

    async def _flush(self) -> None:
        self._drain(force=True)
        waits = [batch.done for batch in self._open]
        if waits:
            await asyncio.gather(*(asyncio.shield(w) for w in waits))

    def _on_ack(self, ack: pb.BatchAck, in_flight: dict[str, _Batch]) -> None:
        batch = in_flight.pop(ack.batch_id, None)
        if batch is None:
            return
        if ack.status == pb.ACK_STATUS_RETRY:
            assert self._loop is not None
            delay = (ack.retry_after_ms or 100) / 1000 * _jitter.uniform(0.8, 1.2)
            self._loop.call_later(delay, self._requeue, batch)
            return
        if ack.status == pb.ACK_STATUS_REFUSED:
            rejections = [
                pb.Rejection(index=i, event_id=ev.event_id, field="", reason=ack.message)
                for i, ev in enumerate(batch.msg.events)
            ]
        else:
            rejections = list(ack.rejected)
            self._acked += ack.accepted
            if ack.wedding_day:
                self._learn_wedding_day(ack.wedding_day)
        self._report_rejected(rejections)
        self._settle(batch)

    def _learn_wedding_day(self, weddings: Any) -> None:
        """Batch these weddings' events apart for a while; forget weddings not named again.
        The dict is replaced, never changed in place: ``log()`` reads it from other threads."""
        now = time.monotonic()
        if all(self._today.get(w, 0.0) > now + _WEDDING_DAY_S / 2 for w in weddings):
            return  # known and fresh: no copy per ack
        today = {w: until for w, until in self._today.items() if until > now}
        today.update(dict.fromkeys(weddings, now + _WEDDING_DAY_S))
        self._today = today

    def _report_rejected(self, rejections: list[pb.Rejection]) -> None:
        self._rejected += len(rejections)
        if self._on_rejected is not None:
            for rejection in rejections:
                try:
                    self._on_rejected(rejection)
                except Exception:
                    log.exception("on_rejected callback failed")

    def _next_target(self, current: int) -> int | None:
        """The first target after ``current`` that is not marked down; None when all are."""
        now = time.monotonic()
        n = len(self._targets)
        for step in range(1, n + 1):
            candidate = (current + step) % n
            if self._targets[candidate].down_until <= now:
                return candidate
        return None

    async def _stream_worker(self, index: int = 0) -> None:
        """Own one bidi stream at a time; on any failure resend its unacked batches elsewhere:
        at once on another target that is not marked down, else after a backoff."""
        backoff = [0.05]
        first = True
        current = index % len(self._targets)
        while True:
            if self._exiting and not first:
                # At interpreter exit a lost stream stays lost: from Python 3.12 on no thread can
                # start then, and a new gRPC channel may need one (grpc.aio crashes without it).
                return
            first = False
            in_flight: dict[str, _Batch] = {}
            window = asyncio.Semaphore(self._window)
            target = self._targets[current]
            channel, call = open_stream(target.address, threaded=_forked, connection=self._auth)
            reader = asyncio.create_task(self._read_acks(call, in_flight, window, backoff, target))
            writer = asyncio.create_task(self._write_batches(call, in_flight, window))
            try:
                await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, writer):
                    task.cancel()
                outcome = await asyncio.gather(reader, writer, return_exceptions=True)
                call.cancel()
                await channel.close()
                for batch in in_flight.values():
                    self._requeue(batch)
            errors = [r for r in outcome if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
            reason = _describe(errors[0]) if errors else "stream closed by ingest"
            self._reconnects += 1
            target.failed()
            following = self._next_target(current)
            if following is not None and following != current:
                log.info(
                    "stream to %s lost (%s); resending %d batches to %s",
                    target.address,
                    reason,
                    len(in_flight),
                    self._targets[following].address,
                )
                self._failovers += 1
                current = following
                continue
            log.info("stream to %s lost (%s); resending %d batches", target.address, reason, len(in_flight))
            await asyncio.sleep(backoff[0] * _jitter.uniform(0.5, 1.5))
            backoff[0] = min(backoff[0] * 2, 5.0)
            if following is None:  # every target is marked down: the one back soonest
                current = min(range(len(self._targets)), key=lambda i: self._targets[i].down_until)

    async def _read_acks(
        self, call: Any, in_flight: dict[str, _Batch], window: asyncio.Semaphore, backoff: list[float], target: _Target
    ) -> None:
        async for ack in call:
            backoff[0] = 0.05
            target.answered()
            self._on_ack(ack, in_flight)
            window.release()

    async def _write_batches(self, call: Any, in_flight: dict[str, _Batch], window: asyncio.Semaphore) -> None:
        while True:
            await window.acquire()
            _, _, batch = await self._outbox.get()
            if batch not in self._open:
                window.release()
                continue
            in_flight[batch.msg.batch_id] = batch  # from here a lost stream resends it
            batch.attempts += 1
            await call.write(batch.data)


def _add_events(events: Any, items: Iterable[_Item], source_service: str) -> None:
    """Append logged events to a batch's ``events``. Fields are set one by one, empty ones
    skipped: protobuf's keyword constructor costs about half as much again per event."""
    add = events.add
    for (
        event_id,
        ns,
        event_type,
        user_id,
        org,
        wedding,
        severity,
        outcome,
        resource_type,
        resource_id,
        source_ip,
        attributes,
        caller_trace_id,
    ) in items:
        ev = add()
        ev.event_id = event_id
        ev.event_type = event_type
        ev.user_id = user_id
        if org:
            ev.organization_id = org
        if wedding:
            ev.wedding_id = wedding
        ev.severity = severity
        ev.outcome = outcome
        if resource_type:
            ev.resource_type = resource_type
        if resource_id:
            ev.resource_id = resource_id
        if source_ip:
            ev.source_ip = source_ip
        if source_service:
            ev.source_service = source_service
        ts = ev.occurred_at  # one wrapper for both fields
        ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
        if attributes:
            ev.attributes.update(attributes)
        if caller_trace_id:
            ev.caller_trace_id = caller_trace_id


def _task_ended(task: concurrent.futures.Future[None], ready: threading.Event) -> None:
    ready.set()  # also when the client's main task failed at once: _start() must not wait forever
    if not task.cancelled() and task.exception() is not None:
        log.error("audit client stopped by an error", exc_info=task.exception())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):  # grpc.aio's and the synchronous stack's
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


# ---- the process's life: fork and exit -------------------------------------------------------

_exit_watched_by = 0  # the pid that registered _close_all_at_exit with multiprocessing
_forked = False  # this process is a fork of one that had the SDK loaded: no grpc.aio here


def _before_fork() -> None:
    for client in list(_clients):
        client._before_fork()


def _after_fork_in_parent() -> None:
    for client in list(_clients):
        client._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    for client in list(_clients):
        client._after_fork_in_child()


def _close_all_at_exit() -> None:
    """Close every client this process started, each waiting at most its ``exit_timeout`` from
    now: they deliver at the same time, so the whole wait is the longest of them."""
    start = time.monotonic()
    clients = [client for client in list(_clients) if client._task is not None and not client._closed]
    for client in clients:
        client._exiting = True
    for client in clients:
        client.close(max(0.0, client._exit_timeout - (time.monotonic() - start)))


def _watch_exit() -> None:
    """Close the clients when this process ends: ``atexit`` (registered below) covers a normal
    exit; a ``multiprocessing`` child ends with ``os._exit`` after running multiprocessing's own
    exit finalizers, which it clears when it starts, so they get ours once a client is used."""
    global _exit_watched_by
    pid = os.getpid()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _exit_watched_by == pid:
        return
    _exit_watched_by = pid
    mp_util.Finalize(None, _close_all_at_exit, exitpriority=0)


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
