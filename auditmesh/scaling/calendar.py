"""The wedding calendar as a forecast input: weddings with expected guests, vendors and the
ceremony time in the wedding's own time zone; a CSV import with per-line errors, and a
realistic generator (season May-October, Saturdays dominant).

CSV columns (a header line is required; order is free)::

    wedding_id,wedding_date,ceremony_time,timezone,guests,vendors
    wed-1,2027-06-12,15:30,Europe/London,120,9

The store's ``wedding_calendar`` table holds them (see :mod:`auditmesh.schema`); importing the
same file twice writes the same rows (the wedding id is the key).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "COLUMNS",
    "DEFAULT_CEREMONY",
    "Wedding",
    "generate",
    "load_weddings",
    "parse_csv",
    "put_weddings",
    "to_csv",
]

COLUMNS = ("wedding_id", "wedding_date", "ceremony_time", "timezone", "guests", "vendors")
DEFAULT_CEREMONY = dt.time(15, 0)
"""Ceremony time assumed for a wedding whose time is not known."""
_TZS = ("Europe/London", "America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/Paris")
_MAX_ID = 128


@dataclass(frozen=True)
class Wedding:
    wedding_id: str
    wedding_date: dt.date
    timezone: str
    ceremony_time: dt.time | None = None
    guests: int | None = None
    vendors: int | None = None

    def ceremony_at(self) -> dt.datetime:
        """The ceremony's start as an aware UTC datetime (an unknown time zone counts as UTC)."""
        try:
            zone: dt.tzinfo = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = dt.UTC
        local = dt.datetime.combine(self.wedding_date, self.ceremony_time or DEFAULT_CEREMONY, zone)
        return local.astimezone(dt.UTC)


def _field(row: dict[str, str | None], name: str) -> str:
    return (row.get(name) or "").strip()


def _count(raw: str, name: str) -> int | None:
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"{name} {value} is negative")
    return value


def parse_row(row: dict[str, str | None]) -> Wedding:
    """One CSV row as a wedding; ``ValueError`` names the bad field."""
    wedding_id = _field(row, "wedding_id")
    if not wedding_id:
        raise ValueError("wedding_id is empty")
    if len(wedding_id) > _MAX_ID or not wedding_id.isprintable() or not wedding_id.isascii():
        raise ValueError(f"wedding_id must be 1-{_MAX_ID} printable ASCII characters")
    raw_date = _field(row, "wedding_date")
    try:
        date = dt.date.fromisoformat(raw_date)
    except ValueError:
        raise ValueError(f"wedding_date {raw_date!r} is not a date (YYYY-MM-DD)") from None
    timezone = _field(row, "timezone") or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {timezone!r} is not an IANA time zone") from None
    raw_time = _field(row, "ceremony_time")
    ceremony: dt.time | None = None
    if raw_time:
        try:
            ceremony = dt.time.fromisoformat(raw_time)
        except ValueError:
            raise ValueError(f"ceremony_time {raw_time!r} is not a time (HH:MM)") from None
    return Wedding(
        wedding_id,
        date,
        timezone,
        ceremony,
        _count(_field(row, "guests"), "guests"),
        _count(_field(row, "vendors"), "vendors"),
    )


def parse_csv(text: str) -> tuple[list[Wedding], list[str]]:
    """Every good row as a wedding, and one error per bad line (``line N: reason``)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in ("wedding_id", "wedding_date") if name not in header]
    if missing:
        return [], [f"line 1: header lacks {', '.join(missing)} (columns: {', '.join(COLUMNS)})"]
    reader.fieldnames = header
    weddings: list[Wedding] = []
    errors: list[str] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            errors.append(f"line {line}: more fields than the header has")
            continue
        try:
            weddings.append(parse_row(row))
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
    return weddings, errors


def to_csv(weddings: Iterable[Wedding]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for w in weddings:
        writer.writerow(
            [
                w.wedding_id,
                w.wedding_date.isoformat(),
                w.ceremony_time.strftime("%H:%M") if w.ceremony_time else "",
                w.timezone,
                "" if w.guests is None else w.guests,
                "" if w.vendors is None else w.vendors,
            ]
        )
    return out.getvalue()


_MONTH_WEIGHT = {1: 0.3, 2: 0.35, 3: 0.5, 4: 0.7, 5: 1.1, 6: 1.5, 7: 1.3, 8: 1.4, 9: 1.6, 10: 1.4, 11: 0.5, 12: 0.45}
"""Relative number of weddings per month: the season is May to October, September the peak."""
_WEEKDAY_WEIGHT = (0.08, 0.05, 0.06, 0.12, 0.6, 1.0, 0.35)
"""Monday to Sunday, relative to Saturday."""


def generate(start: dt.date, days: int, *, saturday_peak: int = 60, seed: int = 1) -> list[Wedding]:
    """Weddings for ``days`` days from ``start``: up to about ``saturday_peak`` on a peak-season
    Saturday, fewer on other days and out of season; ceremonies mostly 11:00-18:00 local, guests
    around 120, vendors around 8."""
    rng = random.Random(seed)
    weddings: list[Wedding] = []
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        expected = saturday_peak * _MONTH_WEIGHT[day.month] / 1.6 * _WEEKDAY_WEIGHT[day.weekday()]
        count = max(0, round(rng.gauss(expected, max(expected, 1) ** 0.5)))
        for n in range(count):
            hour = min(20, max(9, round(rng.gauss(15, 2))))
            weddings.append(
                Wedding(
                    f"wed-{day.isoformat()}-{n:03d}",
                    day,
                    rng.choice(_TZS),
                    dt.time(hour, rng.choice((0, 15, 30, 45))),
                    max(10, round(rng.lognormvariate(4.7, 0.45))),
                    max(1, round(rng.gauss(8, 3))),
                )
            )
    return weddings


def _ceremony(value: Any) -> dt.time | None:
    """The driver's ``cassandra.util.Time`` (or None) as a ``datetime.time``."""
    if value is None:
        return None
    if isinstance(value, dt.time):
        return value
    nanos = int(value.nanosecond_time)
    seconds, nanos = divmod(nanos, 1_000_000_000)
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, nanos // 1000)


def load_weddings(session: Any, keyspace: str) -> list[Wedding]:
    """Every wedding of the calendar (a cassandra-driver session; blocking)."""
    stmt = f"SELECT wedding_id, wedding_date, timezone, ceremony_time, guests, vendors FROM {keyspace}.wedding_calendar"
    out: list[Wedding] = []
    for row in session.execute(stmt, timeout=30):
        if row.wedding_date is None:
            continue
        date = row.wedding_date.date() if hasattr(row.wedding_date, "date") else row.wedding_date
        out.append(
            Wedding(row.wedding_id, date, row.timezone or "UTC", _ceremony(row.ceremony_time), row.guests, row.vendors)
        )
    return out


def put_weddings(session: Any, keyspace: str, weddings: Sequence[Wedding]) -> None:
    """Write (or overwrite) the weddings; idempotent (blocking)."""
    insert = session.prepare(
        f"INSERT INTO {keyspace}.wedding_calendar "
        "(wedding_id, wedding_date, timezone, ceremony_time, guests, vendors) VALUES (?, ?, ?, ?, ?, ?)"
    )
    futures = []
    for w in weddings:
        futures.append(
            session.execute_async(
                insert, (w.wedding_id, w.wedding_date, w.timezone, w.ceremony_time, w.guests, w.vendors)
            )
        )
        if len(futures) >= 64:
            for future in futures:
                future.result()
            futures.clear()
    for future in futures:
        future.result()
