"""Search planning: which partitions to read, in which order, and signed page tokens.

A search reads the ``partitions`` index once, then visits only non-empty time buckets newest
first, reading each with keyset pagination on (occurred_at, event_id) and filtering rows on
their columns; it stops as soon as a page is full. The page token records where the page ended
and is bound by an HMAC to the search it came from, so it cannot be edited into another
wedding's (or filter's) data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Protocol

from auditmesh.errors import InvalidRequest
from auditmesh.store import BUCKET_MS, DAY_MS, Row
from auditmesh.validation import check_id, check_timestamp
from auditpb.v1 import audit_pb2 as pb

__all__ = ["Cursor", "PageBounds", "RowSource", "SearchSpec", "TokenSigner", "page"]

DEFAULT_WINDOW_MS = 30 * DAY_MS
MAX_WINDOW_MS = 400 * DAY_MS
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_PAGES = 100
MAX_EVENT_TYPES = 64
MAX_TOKEN_LEN = 1024
_READ_AHEAD = 4
_EVENT_FRAMING = 8
"""Bytes a page adds to each event's payload (field tag and length)."""


@dataclass(frozen=True)
class PageBounds:
    """Work and size bounds of one page; a page that reaches one ends early with a token."""

    max_bytes: int = 3 * 1024 * 1024
    """Serialized bytes of a page's events: under gRPC's default 4 MiB receive limit."""
    max_scanned: int = 5000
    """Rows read for one page: a filter that matches little cannot scan a whole range in one call."""


class RowSource(Protocol):
    async def buckets(self, scope: str, key: str, newest: int, oldest: int) -> list[int]: ...

    async def rows(
        self,
        scope: str,
        key: str,
        bucket: int,
        *,
        end_ms: int,
        start_ms: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Row]: ...


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: the partition key, the range and the row filters."""

    scope: str
    key: str
    start_ms: int
    end_ms: int
    event_types: frozenset[str]
    min_severity: int
    outcome: int
    organization_id: str
    page_size: int
    open_end: bool = False

    @classmethod
    def from_request(
        cls, req: pb.SearchRequest, now_ms: int | None = None, *, max_id_len: int = 128, max_text_len: int = 256
    ) -> SearchSpec:
        if bool(req.wedding_id) == bool(req.user_id):
            raise InvalidRequest("wedding_id", "give exactly one of wedding_id and user_id")
        if req.min_severity not in pb.Severity.values():
            raise InvalidRequest("min_severity", f"unknown severity {req.min_severity}")
        if req.outcome not in pb.Outcome.values():
            raise InvalidRequest("outcome", f"unknown outcome {req.outcome}")
        if req.page_size > MAX_PAGE:
            raise InvalidRequest("page_size", f"at most {MAX_PAGE}")
        for name in ("wedding_id", "user_id", "organization_id"):
            value = getattr(req, name)
            problem = value and check_id(value, max_id_len)
            if problem:
                raise InvalidRequest(name, problem)
        if len(req.event_types) > MAX_EVENT_TYPES:
            raise InvalidRequest("event_types", f"at most {MAX_EVENT_TYPES} types")
        for event_type in req.event_types:
            if len(event_type) > max_text_len:
                raise InvalidRequest("event_types", f"a type longer than {max_text_len} characters")
        if len(req.page_token) > MAX_TOKEN_LEN:
            raise InvalidRequest("page_token", "malformed")
        for name, given, value in (("start", req.HasField("start"), req.start), ("end", req.HasField("end"), req.end)):
            problem = given and check_timestamp(value)
            if problem:
                raise InvalidRequest(name, problem)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        # An open end reaches past the clock (events may be stamped slightly ahead of it); an
        # open start is whole days, so a default search means the same thing all day.
        open_end = not req.HasField("end")
        end_ms = now_ms + DAY_MS if open_end else req.end.ToMilliseconds()
        start_ms = (
            req.start.ToMilliseconds() if req.HasField("start") else (now_ms - DEFAULT_WINDOW_MS) // DAY_MS * DAY_MS
        )
        if start_ms >= end_ms:
            raise InvalidRequest("start", "start must be before end")
        if end_ms - start_ms > MAX_WINDOW_MS:
            raise InvalidRequest("start", f"range longer than {MAX_WINDOW_MS // DAY_MS} days")
        scope, key = ("w", req.wedding_id) if req.wedding_id else ("u", req.user_id)
        return cls(
            scope=scope,
            key=key,
            start_ms=start_ms,
            end_ms=end_ms,
            event_types=frozenset(req.event_types),
            min_severity=req.min_severity,
            outcome=req.outcome,
            organization_id=req.organization_id,
            page_size=req.page_size or DEFAULT_PAGE,
            open_end=open_end,
        )

    def fingerprint(self) -> str:
        """What a page token is bound to: the partition key and the filters. The token carries
        the time range itself, so a search with a default range continues over the same range."""
        parts = [
            self.scope,
            self.key,
            *sorted(self.event_types),
            str(self.min_severity),
            str(self.outcome),
            self.organization_id,
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    def buckets(self, cursor: Cursor | None) -> range:
        """Every time bucket the page after ``cursor`` may read."""
        newest = (self.end_ms - 1) // BUCKET_MS
        if cursor is not None:
            newest = min(newest, cursor.bucket)
        return range(self.start_ms // BUCKET_MS, newest + 1)

    def identity(self, cursor: Cursor | None) -> str:
        """Everything that decides a page's content except the data: the cache key's stem."""
        end = "open" if self.open_end else str(self.end_ms)
        where = "" if cursor is None else f"{cursor.bucket}:{cursor.occurred_ms}:{cursor.event_id}"
        return f"{self.fingerprint()}|{self.start_ms}|{end}|{self.page_size}|{where}"

    def matches(self, row: Row) -> bool:
        if self.event_types and row.event_type not in self.event_types:
            return False
        if self.min_severity and row.severity > self.min_severity:
            return False
        if self.outcome and row.outcome != self.outcome:
            return False
        return not (self.organization_id and row.organization_id != self.organization_id)


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its bucket and last (occurred_ms, event_id)."""

    bucket: int
    occurred_ms: int
    event_id: str


class TokenSigner:
    """Encodes cursors as opaque tokens, signed and bound to one search."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        # Cached pages hold tokens signed with this key; their cache keys must say which key.
        self.key_id = hashlib.sha256(b"auditmesh-key-id" + key).hexdigest()[:12]

    def _sig(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()[:18]).decode()

    def encode(self, spec: SearchSpec, cursor: Cursor) -> str:
        body = json.dumps(
            [spec.fingerprint(), spec.start_ms, spec.end_ms, cursor.bucket, cursor.occurred_ms, cursor.event_id],
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + self._sig(body)

    def decode(
        self, spec: SearchSpec, token: str, *, explicit_start: bool = False, explicit_end: bool = False
    ) -> tuple[SearchSpec, Cursor]:
        """The search to continue (with the token's time range) and where to continue it. A
        bound the request gives explicitly must be the token's; one it leaves open (an open end
        moves with the clock) continues the token's."""
        try:
            encoded, sig = token.split(".", 1)
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, TypeError):
            raise InvalidRequest("page_token", "malformed") from None
        if not hmac.compare_digest(self._sig(body).encode(), sig.encode()):
            raise InvalidRequest("page_token", "bad signature")
        fingerprint, start_ms, end_ms, bucket, occurred, event_id = json.loads(body)
        if fingerprint != spec.fingerprint():
            raise InvalidRequest("page_token", "belongs to a different search")
        if (explicit_start and spec.start_ms != start_ms) or (explicit_end and spec.end_ms != end_ms):
            raise InvalidRequest("page_token", "belongs to a search over a different time range")
        return replace(spec, start_ms=int(start_ms), end_ms=int(end_ms)), Cursor(
            int(bucket), int(occurred), str(event_id)
        )


async def page(
    source: RowSource, spec: SearchSpec, cursor: Cursor | None, bounds: PageBounds = PageBounds()
) -> tuple[list[Row], Cursor | None]:
    """The page after ``cursor``, newest first, and the cursor after it (None when nothing follows).

    A page ends early, with a cursor, when its events would pass ``bounds.max_bytes`` (it holds
    at least one event) or after ``bounds.max_scanned`` rows were read: it may then hold fewer
    than ``page_size`` events, or none, and the search continues from the cursor.

    Reads the partitions index once, then only the non-empty time buckets of the range, newest
    first, each with keyset pagination, and stops as soon as the page is full. When the first
    bucket does not fill the page (sparse or filtered searches), the first reads of the next
    few buckets go out together; rows are still consumed strictly in bucket order.
    """
    buckets = spec.buckets(cursor)
    present = await source.buckets(spec.scope, spec.key, buckets.stop - 1, buckets.start)
    found: list[Row] = []
    size = 0
    scanned = 0
    fetch = spec.page_size
    ahead: dict[int, asyncio.Task[list[Row]]] = {}

    def first_read(bucket: int) -> Awaitable[list[Row]]:
        after = (cursor.occurred_ms, cursor.event_id) if cursor and cursor.bucket == bucket else None
        return source.rows(
            spec.scope, spec.key, bucket, end_ms=spec.end_ms, start_ms=spec.start_ms, after=after, limit=fetch
        )

    last_seen: Cursor | None = None  # the last row read, where a page that ends early resumes

    try:
        for position, bucket in enumerate(present):
            if position > 0:
                for upcoming in present[position : position + _READ_AHEAD]:
                    if upcoming not in ahead:
                        ahead[upcoming] = asyncio.ensure_future(first_read(upcoming))
                rows = await ahead.pop(bucket)
            else:
                rows = await first_read(bucket)
            while True:
                for row in rows:
                    if spec.matches(row):
                        cost = len(row.payload) + _EVENT_FRAMING
                        if found and size + cost > bounds.max_bytes:
                            return found, last_seen
                        found.append(row)
                        size += cost
                        if len(found) == spec.page_size:
                            return found, Cursor(bucket, row.occurred_ms, row.event_id)
                    last_seen = Cursor(bucket, row.occurred_ms, row.event_id)
                scanned += max(1, len(rows))
                more_here = len(rows) == fetch
                if (
                    scanned >= bounds.max_scanned
                    and last_seen is not None
                    and (more_here or position + 1 < len(present))
                ):
                    return found, last_seen
                if not more_here:
                    break
                rows = await source.rows(
                    spec.scope,
                    spec.key,
                    bucket,
                    end_ms=spec.end_ms,
                    start_ms=spec.start_ms,
                    after=(rows[-1].occurred_ms, rows[-1].event_id),
                    limit=fetch,
                )
        return found, None
    finally:
        for task in ahead.values():
            if task.done() and not task.cancelled():
                task.exception()  # read ahead but not needed: its outcome does not matter
            task.cancel()
