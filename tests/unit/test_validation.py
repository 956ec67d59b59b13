"""Validation rejects each kind of bad event with its field and reason and keeps the rest."""

from __future__ import annotations

import time

from auditmesh.validation import Limits, validate_batch
from auditpb.v1 import audit_pb2 as pb


def event(i: int = 0, **fields: object) -> pb.Event:
    ev = pb.Event(
        event_id=f"e{i}",
        user_id="u1",
        organization_id="o1",
        wedding_id="w1",
        event_type="auth.login.failed",
        severity=pb.P2_MEDIUM,
        outcome=pb.OUTCOME_FAILURE,
    )
    ev.occurred_at.FromSeconds(int(time.time()))
    for name, value in fields.items():
        if name == "occurred_s":
            ev.occurred_at.FromSeconds(int(value))  # type: ignore[call-overload]
        elif name == "attributes":
            ev.attributes.update(value)  # type: ignore[call-overload]
        else:
            setattr(ev, name, value)
    return ev


def reasons(events: list[pb.Event]) -> dict[int, tuple[str, str]]:
    _, rejected = validate_batch(events, Limits())
    return {r.index: (r.field, r.reason) for r in rejected}


def test_valid_events_pass() -> None:
    valid, rejected = validate_batch([event(0), event(1)], Limits())
    assert valid == [0, 1] and rejected == []


def test_each_bad_event_is_named_and_neighbours_kept() -> None:
    now = int(time.time())
    batch = [
        event(0),
        event(1, event_id=""),
        event(2, wedding_id="w" * 10_000),
        event(3, occurred_s=now + 3 * 365 * 86400),
        event(4, severity=42),
        event(5, attributes={"blob": "x" * 1_000_000}),
        event(6, event_type="Not A Type"),
        event(7, outcome=0),
        event(8, user_id=""),
        event(9, occurred_s=now - 30 * 86400),
        event(10),
    ]
    valid, _ = validate_batch(batch, Limits())
    assert valid == [0, 10]
    got = reasons(batch)
    assert got[1] == ("event_id", "required")
    assert got[2][0] == "wedding_id" and "longer than 128" in got[2][1]
    assert got[3][0] == "occurred_at" and "future" in got[3][1]
    assert got[4] == ("severity", "unknown severity 42")
    assert got[5][0] == "attributes[blob]" and "exceed" in got[5][1]
    assert got[6][0] == "event_type"
    assert got[7][0] == "outcome"
    assert got[8] == ("user_id", "required")
    assert got[9][0] == "occurred_at" and "past" in got[9][1]


def test_duplicate_id_in_one_batch_keeps_first() -> None:
    valid, rejected = validate_batch([event(1), event(1)], Limits())
    assert valid == [0]
    assert [(r.index, r.field) for r in rejected] == [(1, "event_id")]


def test_too_many_attributes() -> None:
    got = reasons([event(0, attributes={f"k{i}": "v" for i in range(100)})])
    assert got[0] == ("attributes", "more than 64 entries")
