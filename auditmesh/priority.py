"""The platform's priority rule and the lanes it picks.

priority = 100
         + 1000 when the wedding calendar says the event's wedding is today (wedding's time zone)
         +  500 on Saturdays (wedding's time zone; UTC when the wedding is not in the calendar)
         +  800 for P0_CRITICAL
         +  300 when the event touches wedding data (guest lists, vendor contracts, payments, timelines)

Lane: P0 -> CRITICAL; wedding today -> WEDDING_DAY; otherwise NORMAL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from auditpb.v1 import audit_pb2 as pb

__all__ = ["CalendarEntry", "CalendarSnapshot", "WEDDING_DATA", "assign_priority", "snapshot_calendar"]

BASE = 100
WEDDING_TODAY = 1000
SATURDAY = 500
CRITICAL = 800
WEDDING_DATA_BONUS = 300
WEDDING_DATA = frozenset({"guestlist", "guest_list", "vendor_contract", "contract", "payment", "timeline"})
_SATURDAY = 5


@dataclass(frozen=True)
class CalendarEntry:
    wedding_id: str
    wedding_date: dt.date
    timezone: str


@dataclass(frozen=True)
class CalendarSnapshot:
    """What the calendar says at one moment; rebuilt periodically, read per event."""

    today: frozenset[str]
    saturday: frozenset[str]
    not_saturday: frozenset[str]
    saturday_utc: bool


def snapshot_calendar(entries: Iterable[CalendarEntry], now: dt.datetime) -> CalendarSnapshot:
    """Resolve each wedding's local date now; unknown time zones count as UTC."""
    today: set[str] = set()
    saturday: set[str] = set()
    not_saturday: set[str] = set()
    for entry in entries:
        try:
            local = now.astimezone(ZoneInfo(entry.timezone)).date()
        except (ZoneInfoNotFoundError, ValueError):
            local = now.astimezone(dt.UTC).date()
        if local == entry.wedding_date:
            today.add(entry.wedding_id)
        (saturday if local.weekday() == _SATURDAY else not_saturday).add(entry.wedding_id)
    return CalendarSnapshot(
        frozenset(today),
        frozenset(saturday),
        frozenset(not_saturday),
        now.astimezone(dt.UTC).weekday() == _SATURDAY,
    )


_WEDDING_DATA_HEADS = tuple(f"{word}." for word in sorted(WEDDING_DATA))


def _touches_wedding_data(ev: pb.Event) -> bool:
    """The event type's first word, or the resource type, is one of :data:`WEDDING_DATA`."""
    event_type = ev.event_type
    return event_type.startswith(_WEDDING_DATA_HEADS) or event_type in WEDDING_DATA or ev.resource_type in WEDDING_DATA


def assign_priority(ev: pb.Event, cal: CalendarSnapshot) -> int:
    """Set ``ev.priority`` and return the lane of the event."""
    wedding = ev.wedding_id
    priority = BASE
    lane = pb.LANE_NORMAL
    if wedding and wedding in cal.today:
        priority += WEDDING_TODAY
        lane = pb.LANE_WEDDING_DAY
    if wedding in cal.saturday or (cal.saturday_utc and wedding not in cal.not_saturday):
        priority += SATURDAY
    if ev.severity == pb.P0_CRITICAL:
        priority += CRITICAL
        lane = pb.LANE_CRITICAL
    if _touches_wedding_data(ev):
        priority += WEDDING_DATA_BONUS
    ev.priority = priority
    return lane
