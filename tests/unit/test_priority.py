"""The platform's priority rule: each bonus applies exactly when its condition holds."""

from __future__ import annotations

import datetime as dt

import pytest

from auditmesh.priority import CalendarEntry, assign_priority, snapshot_calendar
from auditpb.v1 import audit_pb2 as pb

FRIDAY_NOON = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SATURDAY_NOON = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def ev(**fields: object) -> pb.Event:
    e = pb.Event(event_type="auth.login.succeeded", severity=pb.P3_LOW)
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def test_base_priority_is_normal_lane() -> None:
    cal = snapshot_calendar([], FRIDAY_NOON)
    e = ev(wedding_id="w1")
    assert assign_priority(e, cal) == pb.LANE_NORMAL
    assert e.priority == 100


def test_wedding_today_in_its_time_zone() -> None:
    # 23:30 UTC Friday is already Saturday in Sydney: the wedding dated Saturday is "today" there.
    late_friday = dt.datetime(2026, 11, 27, 23, 30, tzinfo=dt.UTC)
    entries = [
        CalendarEntry("syd", dt.date(2026, 11, 28), "Australia/Sydney"),
        CalendarEntry("lon", dt.date(2026, 11, 28), "Europe/London"),
    ]
    cal = snapshot_calendar(entries, late_friday)
    syd, lon = ev(wedding_id="syd"), ev(wedding_id="lon")
    assert assign_priority(syd, cal) == pb.LANE_WEDDING_DAY
    assert syd.priority == 100 + 1000 + 500  # today and Saturday in Sydney
    assert assign_priority(lon, cal) == pb.LANE_NORMAL
    assert lon.priority == 100


def test_saturday_p0_and_wedding_data_add_up() -> None:
    cal = snapshot_calendar([], SATURDAY_NOON)
    e = ev(wedding_id="w9", event_type="guestlist.export", severity=pb.P0_CRITICAL)
    assert assign_priority(e, cal) == pb.LANE_CRITICAL
    assert e.priority == 100 + 500 + 800 + 300


def test_resource_type_counts_as_wedding_data() -> None:
    cal = snapshot_calendar([], FRIDAY_NOON)
    e = ev(resource_type="payment")
    assign_priority(e, cal)
    assert e.priority == 400


@pytest.mark.parametrize(
    ("event_type", "bonus"),
    [
        ("guestlist.viewed", True),
        ("guest_list.export.bulk", True),
        ("payment", True),
        ("timeline.updated", True),
        ("guestlists.viewed", False),
        ("auth.payment.viewed", False),
        ("paymentx", False),
        ("", False),
    ],
)
def test_the_event_types_first_word_decides_the_wedding_data_bonus(event_type: str, bonus: bool) -> None:
    e = ev(event_type=event_type)
    assign_priority(e, snapshot_calendar([], FRIDAY_NOON))
    assert e.priority == 100 + (300 if bonus else 0)
