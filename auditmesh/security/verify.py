"""``auditmesh verify``: proves a range of stored events intact against the processors' digest
chains, or names the first broken link and what is wrong with it.

Checked: every digest of every chain in the window links to its predecessor and hashes to
itself, its root is the Merkle root of its leaves, and each signed checkpoint's signature and
digest hash hold (a checkpoint naming a digest that is gone means the newest digests were
dropped); every event a digest names (in the range, of the wedding) is stored in each table
with the bytes its leaf hashes and the columns its payload has; every stored event of the
range is named by some digest (an inserted row is named by none). Digests after the newest
checkpoint of a chain (a processor killed before its next checkpoint) are reported as an
unsigned tail, not as a break.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cassandra.cluster import Session
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditmesh.security.digests import (
    DAY_MS,
    checkpoint_message,
    decode_index,
    digest_hash,
    genesis,
    leaf_hash,
    merkle_root,
    split_leaves,
)
from auditmesh.store import BUCKET_MS
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Problem", "Report", "verify"]

_SLACK_MS = 10 * 60 * 1000
"""How far around the events' receipt times digests are read: a digest is written right after
its events."""
_TABLES = {"w": ("events_by_wedding", "wedding_id"), "u": ("events_by_user", "user_id")}


@dataclass(frozen=True)
class Problem:
    """One broken link: where (chain and digest, when one is known) and what is wrong."""

    where: str
    what: str
    order: tuple[int, str, int] = (0, "", 0)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    chains: int = 0
    digests: int = 0
    checkpoints: int = 0
    events: int = 0
    unsigned_tail: dict[str, int] = field(default_factory=dict)
    foreign_chains: int = 0
    """Chains whose recorded key is not the trusted checkpoint key: not taken into account."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.order) if self.problems else None


@dataclass(frozen=True)
class _Stored:
    table: str
    event_id: str
    occurred_ms: int
    severity: int
    outcome: int
    event_type: str
    organization_id: str
    payload: bytes


def _ms(value: Any) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


class _Reader:
    def __init__(self, session: Session, keyspace: str, start_ms: int, end_ms: int) -> None:
        self.session = session
        self.start_ms, self.end_ms = start_ms, end_ms
        self._partitions: dict[tuple[str, str, int], dict[tuple[int, str], _Stored]] = {}
        ks = keyspace
        cols = "event_id, occurred_at, severity, outcome, event_type, organization_id, payload"
        p = session.prepare
        self.rows = {
            scope: p(
                f"SELECT {cols} FROM {ks}.{table} WHERE {key} = ? AND bucket = ? AND occurred_at < ?"
                " AND occurred_at >= ?"
            )
            for scope, (table, key) in _TABLES.items()
        }
        self.buckets = p(
            f"SELECT bucket FROM {ks}.partitions WHERE scope = ? AND key = ? AND bucket <= ? AND bucket >= ?"
        )
        self.all_partitions = f"SELECT scope, key, bucket FROM {ks}.partitions"
        self.chains = f"SELECT chain_id, started_at, public_key FROM {ks}.chains"
        self.digests = p(f"SELECT * FROM {ks}.chain_digests WHERE chain_id = ? AND day = ?")
        self.checkpoints = p(f"SELECT * FROM {ks}.chain_checkpoints WHERE chain_id = ? AND day = ?")

    def stored(self, scope: str, key: str, bucket: int, start_ms: int, end_ms: int) -> list[_Stored]:
        table = _TABLES[scope][0]
        return [_row(table, r) for r in self.session.execute(self.rows[scope], (key, bucket, end_ms, start_ms))]

    def prime(self, scope: str, key: str, bucket: int, rows: list[_Stored]) -> None:
        """Rows of a partition already read (over the verified range), so ``one`` need not read them."""
        self._partitions.setdefault((scope, key, bucket), {}).update({(r.occurred_ms, r.event_id): r for r in rows})

    def one(self, scope: str, key: str, occurred: int, event_id: str) -> _Stored | None:
        """The row of one event, from its partition's rows over the range (read once)."""
        bucket = occurred // BUCKET_MS
        rows = self._partitions.get((scope, key, bucket))
        if rows is None:
            read = self.stored(scope, key, bucket, self.start_ms, self.end_ms)
            rows = self._partitions[(scope, key, bucket)] = {(r.occurred_ms, r.event_id): r for r in read}
        return rows.get((occurred, event_id))


def _row(table: str, r: Any) -> _Stored:
    return _Stored(
        table,
        r.event_id,
        _ms(r.occurred_at),
        r.severity or 0,
        r.outcome or 0,
        r.event_type or "",
        r.organization_id or "",
        bytes(r.payload or b""),
    )


def verify(
    session: Session,
    keyspace: str,
    *,
    start_ms: int,
    end_ms: int,
    wedding: str | None = None,
    public_key: ed25519.Ed25519PublicKey | None = None,
    late_ms: int = 7 * 86_400_000,
) -> Report:
    """Verify the events that occurred in [start_ms, end_ms) (of ``wedding``, or all) against
    the digest chains. ``public_key`` is the checkpoint key to trust; None trusts the key each
    chain recorded when it started (which proves only consistency: see docs/security.md)."""
    reader = _Reader(session, keyspace, start_ms, end_ms)
    report = Report()
    stored = _stored_events(reader, start_ms, end_ms, wedding)
    received = [pb.Event.FromString(s.payload).received_at_us // 1000 for s in stored if s.payload]
    low = min([start_ms, *received]) - _SLACK_MS
    # An event may be received up to ``late_ms`` after it occurred (ingest's AUDITMESH_MAX_PAST_S):
    # digests written that much later can name events of the range, also ones no longer stored.
    high = min(max([end_ms + late_ms, *received]), _now_ms()) + _SLACK_MS
    covered: set[tuple[str, str]] = set()
    for chain in session.execute(reader.chains):
        if _ms(chain.started_at) > high:
            continue
        recorded = ed25519.Ed25519PublicKey.from_public_bytes(bytes(chain.public_key))
        if public_key is not None and _raw(recorded) != _raw(public_key):
            # Not signed by the trusted key: its digests vouch for nothing (events only it names
            # are reported as named by no digest).
            report.foreign_chains += 1
            continue
        report.chains += 1
        key = public_key or recorded
        _verify_chain(reader, chain.chain_id, key, low, high, start_ms, end_ms, wedding, report, covered)
    by_table = {(s.table, s.event_id) for s in stored}
    for table, event_id in sorted(by_table - covered):
        report.problems.append(
            Problem(f"{table} {event_id}", "stored but named by no digest (an inserted or forged row)", (2, "", 0))
        )
    report.events = len(stored)
    return report


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _stored_events(reader: _Reader, start_ms: int, end_ms: int, wedding: str | None) -> list[_Stored]:
    first, last = start_ms // BUCKET_MS, (end_ms - 1) // BUCKET_MS
    partitions: Iterable[tuple[str, str, int]]
    if wedding is not None:
        rows = reader.session.execute(reader.buckets, ("w", wedding, last, first))
        partitions = [("w", wedding, r.bucket) for r in rows]
    else:
        partitions = [
            (r.scope, r.key, r.bucket)
            for r in reader.session.execute(reader.all_partitions)
            if first <= r.bucket <= last and r.scope in _TABLES
        ]
    out: list[_Stored] = []
    for scope, key, bucket in partitions:
        rows = reader.stored(scope, key, bucket, start_ms, end_ms)
        reader.prime(scope, key, bucket, rows)
        out.extend(rows)
    return out


def _verify_chain(
    reader: _Reader,
    chain_id: str,
    key: ed25519.Ed25519PublicKey,
    low: int,
    high: int,
    start_ms: int,
    end_ms: int,
    wedding: str | None,
    report: Report,
    covered: set[tuple[str, str]],
) -> None:
    session = reader.session
    days = range(low // DAY_MS, high // DAY_MS + 1)
    digests = {d.seq: d for day in days for d in session.execute(reader.digests, (chain_id, day))}
    checkpoints = [
        c for day in range(days.start, days.stop + 1) for c in session.execute(reader.checkpoints, (chain_id, day))
    ]
    report.digests += len(digests)
    report.checkpoints += len(checkpoints)

    def problem(seq: int, what: str) -> None:
        report.problems.append(Problem(f"chain {chain_id} digest {seq}", what, (1, chain_id, seq)))

    seqs = sorted(digests)
    previous = None
    for seq in seqs:
        d = digests[seq]
        written = _ms(d.written_at)
        if d.day != written // DAY_MS:
            problem(seq, "stored under another day than it was written (moved)")
        if previous is not None and seq != previous.seq + 1:
            problem(previous.seq + 1, f"missing: the chain goes from digest {previous.seq} to {seq} (deleted)")
        expected_prev = (
            genesis(chain_id)
            if seq == 1
            else (previous.hash if previous is not None and previous.seq == seq - 1 else None)
        )
        if expected_prev is not None and bytes(d.prev_hash) != bytes(expected_prev):
            problem(seq, "does not link to the digest before it (a replayed or forged digest)")
        raw_leaves = bytes(d.leaves or b"")
        leaves = split_leaves(raw_leaves)
        if bytes(d.hash) != digest_hash(chain_id, seq, bytes(d.prev_hash), bytes(d.root), len(leaves), written):
            problem(seq, "its hash does not match its content (an edited digest)")
        if merkle_root(leaves) != bytes(d.root):
            problem(seq, "its leaves do not hash to its root (edited leaves)")
        try:
            index = decode_index(bytes(d.events or b"[]"))
        except (ValueError, TypeError, IndexError, KeyError):
            index = None
        if index is None or len(index) != len(leaves) or len(raw_leaves) % 32:
            problem(seq, "its event index and leaves do not match (an edited digest)")
        else:
            _verify_events(reader, seq, index, leaves, start_ms, end_ms, wedding, covered, problem)
        previous = d
    newest_signed = 0
    for c in sorted(checkpoints, key=lambda c: c.seq):
        message = checkpoint_message(chain_id, c.seq, c.digest_seq, bytes(c.digest_hash), _ms(c.at))
        try:
            key.verify(bytes(c.signature), message)
        except InvalidSignature:
            report.problems.append(
                Problem(f"chain {chain_id} checkpoint {c.seq}", "bad signature (forged)", (1, chain_id, c.digest_seq))
            )
            continue
        newest_signed = max(newest_signed, c.digest_seq)
        named = digests.get(c.digest_seq)
        if named is not None:
            if bytes(named.hash) != bytes(c.digest_hash):
                problem(c.digest_seq, f"differs from what signed checkpoint {c.seq} sealed (rewritten)")
        elif seqs and c.digest_seq > seqs[-1] and _ms(c.at) <= high:
            problem(seqs[-1] + 1, f"missing: signed checkpoint {c.seq} seals digest {c.digest_seq} (newest dropped)")
    tail = [s for s in seqs if s > newest_signed]
    if tail:
        report.unsigned_tail[chain_id] = len(tail)


def _verify_events(
    reader: _Reader,
    seq: int,
    index: list[tuple[str, str, str, int]],
    leaves: list[bytes],
    start_ms: int,
    end_ms: int,
    wedding: str | None,
    covered: set[tuple[str, str]],
    problem: Any,
) -> None:
    for i, (event_id, wedding_id, user_id, occurred) in enumerate(index):
        if wedding is not None and wedding_id != wedding:
            continue
        if not start_ms <= occurred < end_ms:
            continue
        places = [("u", user_id)] + ([("w", wedding_id)] if wedding_id else [])
        for scope, key in places:
            table = _TABLES[scope][0]
            row = reader.one(scope, key, occurred, event_id)
            if row is None:
                problem(seq, f"event {event_id} is missing from {table} (deleted)")
                continue
            covered.add((table, event_id))
            try:
                event = pb.Event.FromString(row.payload)
            except Exception:  # noqa: BLE001 - any undecodable payload is an edit
                problem(seq, f"event {event_id} in {table} has an undecodable payload (edited)")
                continue
            if leaf_hash(event) != leaves[i]:
                problem(seq, f"event {event_id} in {table} differs from its digest (edited)")
            elif (row.severity, row.outcome, row.event_type, row.organization_id) != (
                event.severity,
                event.outcome,
                event.event_type,
                event.organization_id,
            ):
                problem(seq, f"event {event_id} in {table} has columns that differ from its payload (edited)")
