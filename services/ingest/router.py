"""Routes validated events to processors over long-lived bidi streams.

Each :class:`ProcessorLink` owns one stream to one processor: requests are queued by lane
(critical first), answers are matched by sequence number. When a stream breaks, every request
waiting on it fails as retryable (the caller resends; writes are idempotent) and the link
reconnects with jittered exponential backoff. The :class:`Router` sends to the connected link
with the fewest events in flight, and bounds what is in flight in events and bytes; critical
and wedding-day requests travel on links of their own, within budgets of their own.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from auditmesh.errors import Overloaded, StoreUnavailable
from auditmesh.metrics import Reservoir
from auditpb.v1 import audit_pb2 as pb
from services.ingest.forward import Forward

__all__ = ["Budget", "ProcessorLink", "Router"]

log = logging.getLogger("auditmesh.ingest")
_LANE_ORDER = {pb.LANE_CRITICAL: 0, pb.LANE_WEDDING_DAY: 1, pb.LANE_NORMAL: 2}
_PROCESS = "/auditpb.v1.ProcessorService/Process"


class Budget:
    """A bound on events and bytes in flight; waiting callers are admitted in arrival order.

    Room is handed to the first waiter when it frees up (``release`` is synchronous and never
    waits), so a waiter that is cancelled or times out holds nothing: no lock is taken across an
    await. An ``asyncio.Condition`` waited on under ``wait_for`` is not safe here: a caller
    cancelled twice (its call ends, then its stream is abandoned) while the waiters contend for
    the condition's lock leaves that lock held by a finished task, and every later release then
    waits forever (Python 3.11's ``wait_for`` stops waiting for the inner task on a second
    cancel).

    Arrival order holds for every waiter: a batch larger than the whole bound (admitted only once
    nothing is in flight) holds the batches behind it until the budget drains. With the default
    bounds a batch is at most a tenth of its lane's events, so this does not arise; a waiter that
    may pass others could instead wait for ever.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self._waiters: collections.deque[tuple[int, int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, events: int, size: int) -> bool:
        if self.events == 0:
            return True  # one oversized batch alone is still admitted: limits per batch guard size
        return self.events + events <= self.max_events and self.bytes + size <= self.max_bytes

    @property
    def waiting(self) -> int:
        """Callers waiting for room."""
        return sum(not fut.done() for _, _, fut in self._waiters)

    async def acquire(self, events: int, size: int, wait_s: float) -> None:
        """Reserve room or raise :class:`Overloaded` after ``wait_s``."""
        if not self._waiters and self._fits(events, size):
            self.events += events
            self.bytes += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((events, size, granted))
        try:
            async with asyncio.timeout(wait_s):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self.release(events, size)  # room handed over just as the wait ended: give it back
            else:
                granted.cancel()
                self._admit()  # a waiter ahead of others gave up: those behind it may fit
            if isinstance(exc, TimeoutError):
                raise Overloaded(f"ingest has {self.events} events in flight (limit {self.max_events})", 500) from None
            raise

    def release(self, events: int, size: int) -> None:
        self.events -= events
        self.bytes -= size
        self._admit()

    def _admit(self) -> None:
        """Hand room to waiters in arrival order, for as long as the first one fits."""
        waiters = self._waiters
        while waiters:
            events, size, granted = waiters[0]
            if granted.done():
                waiters.popleft()
                continue
            if not self._fits(events, size):
                return
            waiters.popleft()
            self.events += events
            self.bytes += size
            granted.set_result(None)


def _channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class ProcessorLink:
    """One bidi stream to one processor, reconnected for as long as the link runs."""

    def __init__(
        self,
        target: str,
        timeout_s: float,
        max_message_bytes: int,
        handoff_us: Reservoir | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``handoff_us``, when given, samples the time from ingest receiving a request's first
        event to the request being handed to gRPC; ``credentials`` make the link TLS (mTLS)."""
        self.target = target
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._max_message_bytes = max_message_bytes
        self._seq = itertools.count(1)
        self._queue: asyncio.PriorityQueue[tuple[int, int, Forward]] = asyncio.PriorityQueue()
        self._waiting: dict[int, asyncio.Future[pb.ProcessResponse]] = {}
        self.connected = asyncio.Event()
        self.in_flight_events = 0
        self._handoff_us = handoff_us
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link {self.target}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_all("ingest is shutting down")

    async def send(self, req: Forward) -> pb.ProcessResponse:
        """Send one request and wait for its answer; raises StoreUnavailable when none comes."""
        seq = next(self._seq)
        req.seq = seq
        future: asyncio.Future[pb.ProcessResponse] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        count = req.count
        self.in_flight_events += count
        self._queue.put_nowait((_LANE_ORDER.get(req.lane, 2), seq, req))
        try:
            return await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"processor {self.target} did not answer in {self._timeout_s}s") from None
        finally:
            self._waiting.pop(seq, None)
            self.in_flight_events -= count

    def _fail_all(self, reason: str) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(StoreUnavailable(reason, 200))
        self._waiting.clear()

    async def _requests(self, queue: asyncio.PriorityQueue[tuple[int, int, Forward]]) -> AsyncIterator[bytes]:
        while True:
            _, seq, req = await queue.get()
            if seq in self._waiting:
                if self._handoff_us is not None and req.count:
                    self._handoff_us.add(time.time_ns() // 1000 - req.received_at_us)
                yield req.serialize()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            channel = _channel(
                self.target,
                self._credentials,
                [
                    ("grpc.max_send_message_length", self._max_message_bytes),
                    ("grpc.max_receive_message_length", self._max_message_bytes),
                    ("grpc.keepalive_time_ms", 10_000),
                    # A connection of its own: channels with equal arguments share one, and a
                    # critical request would queue behind bulk data in its send buffer and
                    # wait on the connection's HTTP/2 flow-control window that bulk fills.
                    ("grpc.use_local_subchannel_pool", 1),
                    # gRPC's own connect backoff (1 s, x1.6 up to 2 min) can sleep through
                    # a processor that came up (or back) after the first refused attempt,
                    # past channel_ready's deadline: a restarted processor then got no
                    # traffic for several deadlines. Retry from 100 ms, at most every 1 s.
                    # (Not grpc.min_reconnect_backoff_ms: core uses it as the least time
                    # an attempt may take, 20 s by default, and a loaded processor or a
                    # TLS handshake may need more than a second.)
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            try:
                await asyncio.wait_for(channel.channel_ready(), 5)
                # A fresh queue per stream: a request can never be taken by a stream that died.
                self._queue = asyncio.PriorityQueue()
                # Requests go as the bytes :class:`Forward` encodes (no serializer).
                process = channel.stream_stream(_PROCESS, None, pb.ProcessResponse.FromString)
                call = process(self._requests(self._queue))
                self.connected.set()
                log.info("connected to processor %s", self.target)
                backoff = 0.05
                async for resp in call:
                    future = self._waiting.get(resp.seq)
                    if future is not None and not future.done():
                        future.set_result(resp)
                reason = f"processor {self.target} closed the stream"
            except asyncio.CancelledError:
                await channel.close()
                raise
            except (grpc.RpcError, TimeoutError, OSError) as exc:
                reason = f"processor {self.target} unreachable: {_describe(exc)}"
            self.connected.clear()
            self._fail_all(reason)
            await channel.close()
            log.warning("%s; reconnecting", reason)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 2.0)


class Router:
    """Picks a processor link per request (the fewest events in flight, ties taken in turn);
    owns the in-flight budgets.

    The critical lane has links and a budget of its own: a P0 event never waits for room
    behind bulk batches, neither in ingest's budget nor in a stream's buffers on the way to
    a processor (HTTP/2 delivers a stream's messages in order, so a critical request on the
    bulk stream would wait for every bulk request sent before it).

    The wedding-day lane is reserved the same way, with links and a budget of its own (not
    the critical lane's: a wedding day can send far more than P0 events, and P0 must not wait
    behind it in a stream). Its budget is its bounded share: the normal lane's budget and
    links are never used by wedding-day requests while their own links are up, so neither
    lane can take room the other needs. Without lane links (or while none is connected) a
    request falls back to the bulk links, where each link's queue serves it ahead of normal
    requests.
    """

    def __init__(
        self,
        links: list[ProcessorLink],
        budget: Budget,
        critical_links: list[ProcessorLink] | None = None,
        critical_budget: Budget | None = None,
        wedding_day_links: list[ProcessorLink] | None = None,
        wedding_day_budget: Budget | None = None,
        link_factory: Callable[[str, bool], ProcessorLink] | None = None,
    ) -> None:
        """``link_factory(target, critical)`` makes the links of processors added by
        :meth:`set_targets` (membership)."""
        self.links = links
        self.budget = budget
        self.critical_links = critical_links or []
        self.critical_budget = critical_budget or budget
        self.wedding_day_links = wedding_day_links or []
        self.wedding_day_budget = wedding_day_budget or budget
        self._link_factory = link_factory
        self._retiring: set[asyncio.Task[None]] = set()
        self._turn = 0

    def _all_links(self) -> list[ProcessorLink]:
        return self.links + self.critical_links + self.wedding_day_links

    def set_targets(self, targets: list[str], retire_timeout_s: float = 30.0) -> None:
        """Link to exactly these processors: new ones get a bulk, a critical and a wedding-day
        link; a link to one that left takes no new request and is closed once its requests are
        answered (or after ``retire_timeout_s``; what is still waiting then fails as retryable)."""
        if self._link_factory is None:
            raise RuntimeError("the router has no link factory: its processors are a static list")
        wanted = set(targets)
        have = {link.target for link in self.links}
        lanes = ((self.links, False), (self.critical_links, True), (self.wedding_day_links, False))
        for target in sorted(wanted - have):
            for links, critical in lanes:
                link = self._link_factory(target, critical)
                links.append(link)
                link.start()
            log.info("processor %s joined", target)
        for target in sorted(have - wanted):
            for links, _ in lanes:
                for link in [link for link in links if link.target == target]:
                    links.remove(link)
                    task = asyncio.create_task(_retire(link, retire_timeout_s), name=f"retire {target}")
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
            log.info("processor %s left", target)

    def start(self) -> None:
        for link in self._all_links():
            link.start()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self._all_links()), *self._retiring)

    def healthy(self) -> bool:
        return any(link.connected.is_set() for link in self.links)

    def budget_for(self, lane: int) -> Budget:
        if lane == pb.LANE_CRITICAL:
            return self.critical_budget
        if lane == pb.LANE_WEDDING_DAY:
            return self.wedding_day_budget
        return self.budget

    async def send(self, req: Forward) -> pb.ProcessResponse:
        live: list[ProcessorLink] = []
        if req.lane == pb.LANE_CRITICAL:
            live = [link for link in self.critical_links if link.connected.is_set()]
        elif req.lane == pb.LANE_WEDDING_DAY:
            live = [link for link in self.wedding_day_links if link.connected.is_set()]
        if not live:
            live = [link for link in self.links if link.connected.is_set()]
        if not live:
            raise StoreUnavailable("no processor is connected", 500)
        # Fewest events in flight; among equals, the next one in turn. A processor that answers
        # before the next request arrives has none in flight, so without the turn every link
        # would tie at zero under moderate load and the first would take every request:
        # processors added by the scaler would stand idle until it was saturated.
        self._turn += 1
        start = self._turn % len(live)
        link = min(live[start:] + live[:start], key=lambda candidate: candidate.in_flight_events)
        return await link.send(req)


async def _retire(link: ProcessorLink, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while link.in_flight_events > 0:
        if time.monotonic() > deadline:
            log.warning(
                "processor %s left with %d events unanswered: they are resent", link.target, link.in_flight_events
            )
            break
        await asyncio.sleep(0.05)
    await link.stop()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return type(exc).__name__
