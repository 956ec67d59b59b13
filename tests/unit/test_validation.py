"""Validation rejects each kind of bad event with its field and reason and keeps the rest."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from auditmesh import validation
from auditmesh.validation import Limits, _Bounds, _check_event, validate_batch
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


_NOW = int(time.time())
_EDGES: dict[str, st.SearchStrategy[Any]] = {
    name: st.sampled_from(["", "a", "x" * 128, "x" * 129, "x" * 256, "x" * 257, "a b", "é", "\x7f", "\t"])
    for name in ("event_id", "user_id", "wedding_id", "organization_id", "source_ip", "resource_id")
}
_EDGES["event_type"] = st.sampled_from(["", "guestlist.viewed", "Auth.Login", "nodot", "a." + "b" * 300, "a.b c"])
_EDGES["severity"] = st.sampled_from([0, pb.P0_CRITICAL, 42])
_EDGES["outcome"] = st.sampled_from([0, pb.OUTCOME_SUCCESS, 9])
_EDGES["seconds"] = st.sampled_from(
    [0, _NOW + 300, _NOW + 301, _NOW - 7 * 86400, _NOW - 7 * 86400 - 1, -62_135_596_801, 253_402_300_800]
)
_EDGES["nanos"] = st.sampled_from([1, 999_999_999, 1_000_000_000, -1])
_EDGES["attributes"] = st.dictionaries(
    st.sampled_from(["", "k", "blob"]), st.sampled_from(["", "v", "x" * 9000]), min_size=1, max_size=2
)
_CHANGES = st.lists(st.one_of(*(st.tuples(st.just(name), edge) for name, edge in _EDGES.items())), max_size=2)


_LIMITS = st.sampled_from([Limits(), Limits(max_past_s=10**11), Limits(max_text_len=16)])


@settings(max_examples=500)
@given(changes=_CHANGES, limits=_LIMITS)
@example(changes=[("seconds", 0)], limits=Limits(max_past_s=10**11))
@example(changes=[("seconds", -62_135_596_801)], limits=Limits(max_past_s=10**11))
def test_the_fast_check_accepts_only_what_the_full_check_accepts(
    changes: list[tuple[str, Any]], limits: Limits
) -> None:
    """Every event the per-batch fast path passes, the field-by-field check passes too, and a
    batch is split exactly as the field-by-field check alone splits it (duplicates included).
    Events are a valid one with one or two fields set to edge values, under the default limits
    under limits where year 1 is not too old, and under limits where the event type is too long."""
    # Every time is _NOW's: the suite may reach this test long after the module was imported.
    known = [event(0, occurred_s=_NOW), event(1, event_type="guestlist.viewed", occurred_s=_NOW)]
    validate_batch(known, Limits(), _NOW)  # their types are known from then on
    ev = event(7, occurred_s=_NOW)
    for name, value in changes:
        if name == "seconds":
            ev.occurred_at.seconds = value
        elif name == "nanos":
            ev.occurred_at.nanos = value
        elif name == "attributes":
            ev.attributes.update(value)
        else:
            setattr(ev, name, value)
    full = _check_event(ev, limits, _NOW)
    if _Bounds(limits, _NOW).valid(ev, ev.event_id):
        assert full is None
    neighbour = event(1, event_type="a.b", occurred_s=_NOW)
    valid, rejected = validate_batch([ev, ev, neighbour], limits, _NOW)
    expected = [0] if full is None else []
    assert valid == [*expected, 2]
    assert [(r.index, r.field) for r in rejected] == [
        *([] if full is None else [(0, full[0])]),
        (1, "event_id" if full is None else full[0]),
    ]


def test_the_fast_check_passes_the_common_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary events of a known type skip the field-by-field check (else the fast path is dead)."""
    calls: list[pb.Event] = []

    def counted(ev: pb.Event, limits: Limits, now_s: int) -> tuple[str, str] | None:
        calls.append(ev)
        return _check_event(ev, limits, now_s)

    monkeypatch.setattr(validation, "_check_event", counted)
    valid, _ = validate_batch([event(i, attributes={"k": "v"}) for i in range(100)], Limits())
    assert valid == list(range(100))
    assert len(calls) <= 1  # the first event of a type not seen before
