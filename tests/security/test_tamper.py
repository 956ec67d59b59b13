"""Tamper evidence against the real services and the real Cassandra: rows are deleted, edited,
forged, dropped and replayed directly in the store, and ``verify`` names each one; a range
untouched by anyone verifies clean, also after a processor was killed mid-run."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cassandra.cluster import Cluster, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.security.digests import decode_index
from auditmesh.security.verify import Report, verify
from auditmesh.store import BUCKET_MS
from auditmesh.supervisor import wait_healthy
from auditmesh.telemetry.scrape import fetch
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import TEST_KEYSPACE, assert_eventually, own_mesh
from tests.security.conftest import SecureMesh, make_event, submit

KS = TEST_KEYSPACE


@pytest.fixture(scope="module")
def session(store_config: StoreConfig) -> Iterator[Session]:
    cluster = Cluster(list(store_config.hosts), port=store_config.port, protocol_version=4)
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@dataclass
class Written:
    wedding: str
    events: list[pb.Event]
    start_ms: int
    end_ms: int


def _key(mesh: SecureMesh) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_private_key((mesh.dir / "checkpoint.key").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.public_key()


def _verify(session: Session, mesh: SecureMesh, w: Written) -> Report:
    return verify(session, KS, start_ms=w.start_ms, end_ms=w.end_ms, wedding=w.wedding, public_key=_key(mesh))


@pytest.fixture
def written(secure_mesh: SecureMesh, session: Session) -> Written:
    """Six events of a fresh wedding, stored through the secure mesh and sealed by a checkpoint."""
    wedding = f"tamper-{uuid.uuid4().hex[:8]}"
    events = [make_event(wedding, user_id=f"u-{i % 2}") for i in range(6)]
    token = secure_mesh.token(f"tamper-{wedding}", "ingest:write")
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        assert submit(channel, token, *events[:3]).accepted == 3
        assert submit(channel, token, *events[3:]).accepted == 3
    times = [ev.occurred_at.ToMilliseconds() for ev in events]
    w = Written(wedding, events, min(times), max(times) + 1)

    def sealed() -> None:
        report = _verify(session, secure_mesh, w)
        assert report.ok and report.events == 6, [str(p) for p in report.problems]
        assert not report.unsigned_tail

    assert_eventually(sealed, timeout=20)
    return w


def _row(session: Session, ev: pb.Event) -> Any:
    ms = ev.occurred_at.ToMilliseconds()
    (row,) = session.execute(
        f"SELECT * FROM {KS}.events_by_wedding WHERE wedding_id = %s AND bucket = %s AND occurred_at = %s"
        " AND event_id = %s",
        (ev.wedding_id, ms // BUCKET_MS, ms, ev.event_id),
    )
    return row


def _put(session: Session, wedding: str, row: Any, **changes: Any) -> None:
    values = {name: getattr(row, name) for name in row._fields}
    values.update(changes)
    values["wedding_id"] = wedding
    columns = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    session.execute(f"INSERT INTO {KS}.events_by_wedding ({columns}) VALUES ({marks})", list(values.values()))


def _delete(session: Session, wedding: str, row: Any) -> None:
    session.execute(
        f"DELETE FROM {KS}.events_by_wedding WHERE wedding_id = %s AND bucket = %s AND occurred_at = %s"
        " AND event_id = %s",
        (wedding, row.bucket, row.occurred_at, row.event_id),
    )


def _broken(report: Report) -> str:
    first = report.first()
    assert first is not None, "verify found nothing"
    return str(first)


def test_a_deleted_row_is_named(secure_mesh: SecureMesh, session: Session, written: Written) -> None:
    """Deleting one event row is reported as that event missing from its table."""
    victim = written.events[2]
    row = _row(session, victim)
    _delete(session, written.wedding, row)
    try:
        assert _broken(_verify(session, secure_mesh, written)).endswith(
            f"event {victim.event_id} is missing from events_by_wedding (deleted)"
        )
    finally:
        _put(session, written.wedding, row)
    assert _verify(session, secure_mesh, written).ok


def test_an_edited_payload_and_an_edited_column_are_named(
    secure_mesh: SecureMesh, session: Session, written: Written
) -> None:
    """Changing a field inside an event's payload, or a column beside it, is reported as an edit
    of that event."""
    victim = written.events[1]
    row = _row(session, victim)
    edited = pb.Event.FromString(row.payload)
    edited.outcome = pb.OUTCOME_FAILURE
    _put(session, written.wedding, row, payload=edited.SerializeToString(), outcome=pb.OUTCOME_FAILURE)
    try:
        assert _broken(_verify(session, secure_mesh, written)).endswith(
            f"event {victim.event_id} in events_by_wedding differs from its digest (edited)"
        )
        _put(session, written.wedding, row, severity=pb.P3_LOW)
        assert _broken(_verify(session, secure_mesh, written)).endswith(
            f"event {victim.event_id} in events_by_wedding has columns that differ from its payload (edited)"
        )
    finally:
        _put(session, written.wedding, row)
    assert _verify(session, secure_mesh, written).ok


def test_a_forged_row_is_named(secure_mesh: SecureMesh, session: Session, written: Written) -> None:
    """A well-formed event row inserted straight into the store is reported as named by no digest."""
    row = _row(session, written.events[0])
    forged = pb.Event.FromString(row.payload)
    forged.event_id = f"forged-{uuid.uuid4().hex[:8]}"
    _put(session, written.wedding, row, event_id=forged.event_id, payload=forged.SerializeToString())
    try:
        assert _broken(_verify(session, secure_mesh, written)) == (
            f"events_by_wedding {forged.event_id}: stored but named by no digest (an inserted or forged row)"
        )
    finally:
        _delete(session, written.wedding, row._replace(event_id=forged.event_id))
    assert _verify(session, secure_mesh, written).ok


def _newest_digests(session: Session, written: Written) -> tuple[str, list[Any]]:
    """The chain holding the wedding's events and its digests, oldest first."""
    ids = {ev.event_id for ev in written.events}
    day = int(time.time() * 1000) // 86_400_000
    for chain in session.execute(f"SELECT chain_id FROM {KS}.chains"):
        rows = list(
            session.execute(f"SELECT * FROM {KS}.chain_digests WHERE chain_id = %s AND day = %s", (chain.chain_id, day))
        )
        if any(ids & {e[0] for e in decode_index(r.events)} for r in rows):
            return chain.chain_id, sorted(rows, key=lambda r: r.seq)
    raise AssertionError("no chain names the wedding's events")


def _put_digest(session: Session, row: Any, **changes: Any) -> None:
    values = {name: getattr(row, name) for name in row._fields}
    values.update(changes)
    columns = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    session.execute(f"INSERT INTO {KS}.chain_digests ({columns}) VALUES ({marks})", list(values.values()))


def test_dropping_the_newest_rows_is_named(secure_mesh: SecureMesh, session: Session, written: Written) -> None:
    """Deleting the newest digests together with the events they name (a truncated history) is
    reported: a signed checkpoint seals a digest that is gone."""
    chain, digests = _newest_digests(session, written)
    newest = digests[-2:]
    assert {e[0] for d in newest for e in decode_index(d.events)} == {ev.event_id for ev in written.events}
    rows = [_row(session, ev) for ev in written.events]
    for d in newest:
        session.execute(
            f"DELETE FROM {KS}.chain_digests WHERE chain_id = %s AND day = %s AND seq = %s", (chain, d.day, d.seq)
        )
    for row in rows:
        _delete(session, written.wedding, row)
    try:
        report = _verify(session, secure_mesh, written)
        assert _broken(report).startswith(f"chain {chain} digest {newest[0].seq}: missing: signed checkpoint")
        assert _broken(report).endswith(f"seals digest {newest[-1].seq} (newest dropped)")
    finally:
        for d in newest:
            _put_digest(session, d)
        for row in rows:
            _put(session, written.wedding, row)
    assert _verify(session, secure_mesh, written).ok


def test_a_replayed_digest_is_named(secure_mesh: SecureMesh, session: Session, written: Written) -> None:
    """An old digest copied in as the chain's next one (a replay) is reported as not linking to
    the digest before it."""
    chain, digests = _newest_digests(session, written)
    replayed = digests[-2]._replace(seq=digests[-1].seq + 1)
    _put_digest(session, replayed)
    try:
        assert _broken(_verify(session, secure_mesh, written)) == (
            f"chain {chain} digest {replayed.seq}: does not link to the digest before it (a replayed or forged digest)"
        )
    finally:
        session.execute(
            f"DELETE FROM {KS}.chain_digests WHERE chain_id = %s AND day = %s AND seq = %s",
            (chain, replayed.day, replayed.seq),
        )
    assert _verify(session, secure_mesh, written).ok


def test_resent_events_verify_clean(secure_mesh: SecureMesh, session: Session) -> None:
    """Events sent twice (a resend after a lost ack) are written and digested twice, the second
    time with another receipt time and priority, and still verify intact."""
    wedding = f"resend-{uuid.uuid4().hex[:8]}"
    events = [make_event(wedding) for _ in range(4)]
    token = secure_mesh.token(f"resend-{wedding}", "ingest:write")
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        assert submit(channel, token, *events).accepted == 4
        first = pb.Event.FromString(_row(session, events[0]).payload).received_at_us
        assert submit(channel, token, *events).accepted == 4
    assert pb.Event.FromString(_row(session, events[0]).payload).received_at_us != first
    times = [ev.occurred_at.ToMilliseconds() for ev in events]
    w = Written(wedding, events, min(times), max(times) + 1)

    def sealed() -> None:
        report = _verify(session, secure_mesh, w)
        assert report.ok and report.events == 4, [str(p) for p in report.problems]
        assert not report.unsigned_tail

    assert_eventually(sealed, timeout=20)


def test_the_verify_command_names_the_first_broken_link(
    secure_mesh: SecureMesh, session: Session, written: Written
) -> None:
    """``auditmesh verify --wedding`` exits 0 on an intact range and 1 naming the broken link."""
    env = {**os.environ, "AUDITMESH_KEYSPACE": KS, "AUDITMESH_SECURITY_DIR": str(secure_mesh.dir)}
    command = [
        sys.executable,
        "-m",
        "auditmesh.cli",
        "verify",
        "--wedding",
        written.wedding,
        "--from",
        str(written.start_ms / 1000),
        "--to",
        str(written.end_ms / 1000),
    ]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and "intact" in clean.stdout, clean.stdout + clean.stderr
    row = _row(session, written.events[4])
    _delete(session, written.wedding, row)
    try:
        broken = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        _put(session, written.wedding, row)
    assert broken.returncode == 1
    assert "first broken link: chain " in broken.stdout
    assert f"event {written.events[4].event_id} is missing from events_by_wedding (deleted)" in broken.stdout


def _written(layout: MeshLayout, name: str) -> float:
    """Events the processor ``name`` wrote since it started (0 while its endpoint does not answer)."""
    try:
        scrape = fetch(layout.metrics_targets()[name], timeout=5)
    except (OSError, http.client.HTTPException):
        return 0.0
    return scrape.total("auditmesh_processor_events_written_total") or 0.0


def _acked_past(client: AuditClient, count: int) -> Callable[[], bool]:
    return lambda: client.stats.acked > count


def test_a_range_verifies_clean_after_kill_9_of_a_processor_mid_run(
    tmp_path_factory: pytest.TempPathFactory, session: Session
) -> None:
    """With two processors (insecure mode: digests are on by default), one killed with SIGKILL
    while events flow and restarted, every event is acknowledged (some after resends) and each
    wedding of the run verifies intact."""
    run = uuid.uuid4().hex[:8]
    weddings = [f"kill-{run}-{i}" for i in range(4)]
    started_ms = int(time.time() * 1000)
    with own_mesh(
        tmp_path_factory, "kill9", 23551, processors=2, redis_db=13, env={"AUDITMESH_CHECKPOINT_INTERVAL_S": "0.5"}
    ) as (layout, supervisor):
        client = AuditClient(layout.ingest_target, source_service="kill9", batch_size=100)
        stop = threading.Event()
        logged = [0]

        def produce() -> None:
            # As fast as the mesh takes them (a backlog of at most 5,000 in the SDK) until the
            # kills are over (or a bound far above what they take): the processors always have
            # batches in flight when one is killed.
            while not stop.is_set() and logged[0] < 400_000:
                if client.stats.pending > 5000:
                    time.sleep(0.005)
                    continue
                for wedding in weddings:
                    client.log("payment.refund.issued", user_id=f"u-{logged[0] % 7}", wedding_id=wedding)
                    logged[0] += 1

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            assert_eventually(lambda: client.stats.acked > 500, timeout=30)
            for _ in range(3):  # until a kill catches batches in flight, whose resends the chain must absorb
                # Killed only once it takes its share of the stream (ingest has reconnected).
                assert_eventually(lambda: _written(layout, "processor-0") > 500, timeout=30)
                supervisor.kill("processor-0")  # SIGKILL, reaped
                assert_eventually(_acked_past(client, client.stats.acked + 500), timeout=30)
                supervisor.start(layout.processor(0))
                wait_healthy(layout.processor(0).target, 60, supervisor.log_file("processor-0"))
                if client.stats.resent:
                    break
        finally:
            stop.set()
            producer.join()
        assert client.flush(timeout=60)
        client.close()
        assert client.stats.acked == logged[0]
        assert client.stats.resent > 0  # batches in flight to the killed processor were resent
        ended_ms = int(time.time() * 1000) + 1000
        total = 0
        for wedding in weddings:
            report = verify(session, KS, start_ms=started_ms - 60_000, end_ms=ended_ms, wedding=wedding)
            assert report.ok, [str(p) for p in report.problems[:5]]
            total += report.events
        assert total == logged[0]


def test_verify_all_covers_every_table_of_a_range(secure_mesh: SecureMesh, session: Session) -> None:
    """``verify`` over all events of a time range finds a row forged straight into
    events_by_user (for an event without a wedding), and the range is intact once it is gone."""
    at_ms = int(time.time() * 1000) - 4 * 86_400_000 - int(uuid.uuid4().int % 86_400_000)
    user = f"u-all-{uuid.uuid4().hex[:8]}"
    events = [make_event("", user_id=user) for _ in range(5)]
    for i, ev in enumerate(events):
        ev.occurred_at.FromMilliseconds(at_ms + i)
    token = secure_mesh.token(f"all-{user}", "ingest:write")
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        assert submit(channel, token, *events).accepted == 5

    def check() -> Report:
        return verify(session, KS, start_ms=at_ms, end_ms=at_ms + 1000, public_key=_key(secure_mesh))

    def intact() -> None:
        report = check()
        assert report.ok and report.events == 5, [str(p) for p in report.problems]

    assert_eventually(intact, timeout=20)
    (row,) = session.execute(
        f"SELECT * FROM {KS}.events_by_user WHERE user_id = %s AND bucket = %s AND occurred_at = %s AND event_id = %s",
        (user, at_ms // BUCKET_MS, at_ms, events[0].event_id),
    )
    forged = pb.Event.FromString(row.payload)
    forged.event_id = f"forged-{uuid.uuid4().hex[:8]}"
    values = {name: getattr(row, name) for name in row._fields}
    values.update(event_id=forged.event_id, payload=forged.SerializeToString())
    session.execute(
        f"INSERT INTO {KS}.events_by_user ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})",
        list(values.values()),
    )
    try:
        assert _broken(check()) == (
            f"events_by_user {forged.event_id}: stored but named by no digest (an inserted or forged row)"
        )
    finally:
        session.execute(
            f"DELETE FROM {KS}.events_by_user WHERE user_id = %s AND bucket = %s AND occurred_at = %s"
            " AND event_id = %s",
            (user, row.bucket, row.occurred_at, forged.event_id),
        )
    intact()


def test_deleting_every_row_of_a_backdated_range_is_named(secure_mesh: SecureMesh, session: Session) -> None:
    """Events that occurred days before they were received, all deleted from a table, are still
    named as missing: the digests written when they arrived are read."""
    at_ms = int(time.time() * 1000) - 5 * 86_400_000 - int(uuid.uuid4().int % 86_400_000)
    wedding = f"late-{uuid.uuid4().hex[:8]}"
    events = [make_event(wedding) for _ in range(3)]
    for i, ev in enumerate(events):
        ev.occurred_at.FromMilliseconds(at_ms + i)
    token = secure_mesh.token(f"late-{wedding}", "ingest:write")
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        assert submit(channel, token, *events).accepted == 3
    w = Written(wedding, events, at_ms, at_ms + 1000)
    assert_eventually(lambda: _verify(session, secure_mesh, w).ok, timeout=20)
    rows = [_row(session, ev) for ev in events]
    for row in rows:
        _delete(session, wedding, row)
    try:
        assert _broken(_verify(session, secure_mesh, w)).endswith("is missing from events_by_wedding (deleted)")
    finally:
        for row in rows:
            _put(session, wedding, row)
    assert _verify(session, secure_mesh, w).ok
