"""Tamper evidence: each processor commit extends a hash chain with a digest of the events it
wrote, and the chain is sealed by Ed25519-signed checkpoints.

- **Leaf**: SHA-256 of ``0x00`` and the event's canonical encoding: the protobuf event with the
  fields ingest sets per delivery (``priority``, ``received_at_us``, ``trace_id``) cleared,
  serialized deterministically. A resent event has the same leaf however often it is written.
- **Digest** (one per group commit): the Merkle root of the group's leaves (RFC 6962 tree),
  chained: ``hash = SHA-256(chain, seq, prev_hash, root, count, written_at)``. The event ids,
  weddings, users and times of the leaves travel in the digest row so that a verifier can find
  the rows they describe.
- **Checkpoint**: every N digests and every T seconds, also when nothing was written, a
  signature over (chain, checkpoint seq, last digest seq and hash, time).
- **Chains**: one per processor process and lane (bulk, critical), so concurrent processors
  and lanes never contend for, or fork, a chain. A digest is written before any request of
  its group is answered: a failed digest write fails the group, which ingest resends, so every
  acknowledged event is in some digest. On the bulk lane it is written after the group's
  events; on the urgent lanes (critical, wedding day) at the same time as them, which takes a
  round trip to the store off a P0 event's ack. The price: when such a group's event write
  fails and its digest's does not, the digest names events that are stored only once the
  caller resends them (it was not acknowledged, so it does), and until then ``verify``
  reports them missing.

Everything lives in tables of its own (:func:`auditmesh.schema.statements`), apart from events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import ResponseFuture, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditmesh.errors import StoreUnavailable
from auditmesh.store import occurred_ms
from auditpb.v1 import audit_pb2 as pb

__all__ = [
    "DAY_MS",
    "DigestChain",
    "decode_index",
    "encode_index",
    "split_leaves",
    "canonical",
    "checkpoint_message",
    "digest_hash",
    "genesis",
    "leaf_hash",
    "merkle_root",
]

log = logging.getLogger("auditmesh.digests")
DAY_MS = 86_400_000
_U64 = struct.Struct(">Q").pack


def canonical(event: pb.Event) -> bytes:
    """The bytes a leaf hashes: the event without the fields each delivery sets anew."""
    copy = pb.Event()
    copy.CopyFrom(event)
    copy.ClearField("priority")
    copy.ClearField("received_at_us")
    copy.ClearField("trace_id")
    return copy.SerializeToString(deterministic=True)


def leaf_hash(event: pb.Event) -> bytes:
    return hashlib.sha256(b"\x00" + canonical(event)).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of ``leaves`` (already leaf hashes).

    Built level by level: adjacent nodes are paired and an unpaired last node moves up as it is,
    which gives the RFC's tree (each left subtree the largest power of two that fits) without
    the recursion's slicing, about half the cost."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    sha256 = hashlib.sha256
    level = list(leaves)
    while len(level) > 1:
        paired = [sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def encode_index(events: Sequence[pb.Event]) -> bytes:
    """Where each leaf's event is stored: (event_id, wedding_id, user_id, occurred ms), as JSON.
    One value, not a collection: a collection costs Cassandra a cell per element."""
    rows = [[ev.event_id, ev.wedding_id, ev.user_id, occurred_ms(ev)] for ev in events]
    return json.dumps(rows, separators=(",", ":")).encode()


def decode_index(raw: bytes) -> list[tuple[str, str, str, int]]:
    """The inverse of :func:`encode_index`; ValueError when it is not such a value."""
    rows = json.loads(raw)
    if not isinstance(rows, list):
        raise ValueError("not a list")
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def split_leaves(raw: bytes) -> list[bytes]:
    """The 32-byte leaf hashes of a digest's ``leaves`` value."""
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def genesis(chain_id: str) -> bytes:
    """The ``prev_hash`` of a chain's first digest."""
    return hashlib.sha256(b"auditmesh-chain\x00" + chain_id.encode()).digest()


def digest_hash(chain_id: str, seq: int, prev: bytes, root: bytes, count: int, written_ms: int) -> bytes:
    body = b"\x1f".join([chain_id.encode(), _U64(seq), prev, root, _U64(count), _U64(written_ms)])
    return hashlib.sha256(b"auditmesh-digest\x00" + body).digest()


def checkpoint_message(chain_id: str, seq: int, digest_seq: int, digest: bytes, at_ms: int) -> bytes:
    body = b"\x1f".join([chain_id.encode(), _U64(seq), _U64(digest_seq), digest, _U64(at_ms)])
    return b"auditmesh-checkpoint\x00" + body


async def _execute(session: Session, statement: Any, values: Sequence[Any]) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def ok(_: Any) -> None:
        loop.call_soon_threadsafe(settle, None)

    def failed(exc: BaseException) -> None:
        loop.call_soon_threadsafe(settle, exc)

    future: ResponseFuture = session.execute_async(statement, values)
    future.add_callbacks(ok, failed)
    try:
        await done
    except Exception as exc:
        raise StoreUnavailable(f"digest chain: {type(exc).__name__}: {exc}"[:300]) from None


class DigestChain:
    """One chain of digests and checkpoints, appended to by one lane of one processor."""

    def __init__(
        self,
        session: Session,
        keyspace: str,
        key: ed25519.Ed25519PrivateKey,
        *,
        lane: str,
        every: int,
        interval_s: float,
        consistency: str = "ONE",
        clock: Any = time.time,
    ) -> None:
        self.chain_id = f"{socket.gethostname()}-{lane}-{uuid.uuid4().hex[:12]}"
        self._session = session
        self._key = key
        self._every = every
        self._interval_s = interval_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._seq = 0
        self._prev = genesis(self.chain_id)
        self._checkpoints = 0
        self._since_checkpoint = 0
        self._task: asyncio.Task[None] | None = None
        level = ConsistencyLevel.name_to_value[consistency]
        ks = keyspace
        self._ins_chain = session.prepare(
            f"INSERT INTO {ks}.chains (chain_id, started_at, public_key) VALUES (?, ?, ?)"
        )
        self._ins_digest = session.prepare(
            f"INSERT INTO {ks}.chain_digests (chain_id, day, seq, written_at, prev_hash, hash, root, events,"
            " leaves) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._ins_checkpoint = session.prepare(
            f"INSERT INTO {ks}.chain_checkpoints (chain_id, day, seq, digest_seq, digest_hash, at, signature)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        for statement in (self._ins_chain, self._ins_digest, self._ins_checkpoint):
            statement.consistency_level = level
        self.digests = 0
        self.digest_us = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def start(self) -> None:
        """Record the chain (with the public key its checkpoints verify with) and start the
        timer that checkpoints it every ``interval_s``."""
        public = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        await _execute(self._session, self._ins_chain, (self.chain_id, self._now_ms(), public))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"checkpoints {self.chain_id}")

    async def close(self) -> None:
        """Stop the timer and seal what was written with a last checkpoint; safe twice."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            try:
                async with self._lock:
                    await self._checkpoint()
            except StoreUnavailable:
                log.warning("chain %s: no final checkpoint (store unavailable)", self.chain_id)

    async def append(self, events: Sequence[pb.Event]) -> None:
        """Chain a digest of ``events`` (a committed group); raises StoreUnavailable when the
        digest could not be written, so the group is resent."""
        started = time.perf_counter()
        leaves = [leaf_hash(ev) for ev in events]
        root = merkle_root(leaves)
        async with self._lock:
            seq = self._seq + 1
            written_ms = self._now_ms()
            digest = digest_hash(self.chain_id, seq, self._prev, root, len(leaves), written_ms)
            values = (
                self.chain_id,
                written_ms // DAY_MS,
                seq,
                written_ms,
                self._prev,
                digest,
                root,
                encode_index(events),
                b"".join(leaves),
            )
            await _execute(self._session, self._ins_digest, values)
            self._seq, self._prev = seq, digest
            self._since_checkpoint += 1
            if self._since_checkpoint >= self._every:
                await self._checkpoint()
        self.digests += 1
        self.digest_us += int((time.perf_counter() - started) * 1e6)

    async def _checkpoint(self) -> None:
        seq = self._checkpoints + 1
        at_ms = self._now_ms()
        signature = self._key.sign(checkpoint_message(self.chain_id, seq, self._seq, self._prev, at_ms))
        await _execute(
            self._session,
            self._ins_checkpoint,
            (self.chain_id, at_ms // DAY_MS, seq, self._seq, self._prev, at_ms, signature),
        )
        self._checkpoints = seq
        self._since_checkpoint = 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                async with self._lock:
                    await self._checkpoint()
            except StoreUnavailable as exc:
                log.warning("chain %s: checkpoint not written: %s", self.chain_id, exc)
