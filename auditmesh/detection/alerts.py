"""Alerts: built from rule hits and correlation firings, stored in Cassandra, filtered for readers.

Storage (see :mod:`auditmesh.schema`): each alert under up to three scopes (its wedding, its
organization, ``all``) by UTC day of its creation, newest first. An update of a suppressed
alert (its running count) rewrites the same rows. Listing reads one scope (the wedding when
the filter names one, else the organization, else ``all``) day by day backwards and filters
severity and rule in memory, with a bound on the rows one page may read.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from auditmesh import cqlbatch, rowcodec
from auditmesh.detection.evaluator import Hit, Update
from auditmesh.detection.rules import Correlation, Detection
from auditmesh.detection.state import Firing
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb

__all__ = [
    "REQUEST_TIMEOUT_S",
    "AlertPage",
    "AlertStore",
    "BadPageToken",
    "alert_of_firing",
    "alert_of_hit",
    "alerts_of_message",
    "batch_messages",
    "channel",
    "matches",
]

_DAY_MS = 86_400_000
REQUEST_TIMEOUT_S = 10.0
"""How long the driver waits for Cassandra's answer to one alert statement."""
_MAX_PAGE = 1000
_MAX_SCAN_ROWS = 5000
_DEFAULT_RANGE_MS = 7 * _DAY_MS
_EPOCH = dt.datetime(1970, 1, 1)


PUBLISH_BATCH = 200
"""Most alerts in one message on the channel (an :class:`AlertBatch`)."""


def channel(keyspace: str) -> str:
    """The Redis pub/sub channel of a deployment's alerts (channels are not per database). Each
    message is an ``AlertBatch``; the name carries the format (``b``), so a process of a version
    that published one alert per message never reads a batch as an alert, nor the other way."""
    return f"am:alerts:b:{keyspace}"


def alerts_of_message(data: bytes) -> list[apb.Alert]:
    """The alerts of one message of the channel (see :func:`batch_messages`)."""
    return list(apb.AlertBatch.FromString(data).alerts)


def batch_messages(alerts: list[apb.Alert]) -> list[bytes]:
    """``alerts`` as the channel's messages: ``AlertBatch``es of up to ``PUBLISH_BATCH``."""
    return [
        apb.AlertBatch(alerts=alerts[i : i + PUBLISH_BATCH]).SerializeToString()
        for i in range(0, len(alerts), PUBLISH_BATCH)
    ]


def _ts(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _group_text(update: Update) -> str:
    return ", ".join(f"{k}={v}" for k, v in update.group)


def _explain(rule: Correlation | Detection, update: Update | None, count: int) -> str:
    if isinstance(rule, Detection):
        what = rule.description.rstrip(".")
        return f"{what}" + (f" ({count} events for {_group_text(update)})" if update is not None else "")
    group = _group_text(update) if update is not None else ""
    window = f"{rule.timespan_ms // 60000} min" if rule.timespan_ms >= 60000 else f"{rule.timespan_ms // 1000} s"
    if rule.kind == "event_count":
        seen = f"{count} events of {', '.join(rule.rules)} for {group} within {window}"
    elif rule.kind == "value_count":
        seen = f"{rule.value_field} values of {', '.join(rule.rules)} for {group} within {window} ({count} so far)"
    else:
        order = " then ".join(rule.rules) if rule.kind == "temporal_ordered" else " and ".join(rule.rules)
        seen = f"{order} for {group} within {window}"
    return f"{rule.description.rstrip('.')}: {seen}"


def alert_of_hit(hit: Hit, now_ms: int, traceparent: str = "") -> apb.Alert:
    ev = hit.event
    return apb.Alert(
        alert_id=uuid.uuid4().hex,
        rule=hit.rule.name,
        title=hit.rule.title,
        severity=hit.rule.severity,  # type: ignore[arg-type]
        wedding_id=ev.wedding_id,
        organization_id=ev.organization_id,
        user_id=ev.user_id,
        count=1,
        event_ids=[ev.event_id],
        explanation=f"{_explain(hit.rule, None, 1)}: {ev.event_type} by {ev.user_id or '-'} (event {ev.event_id})",
        created_at=_ts(now_ms),
        updated_at=_ts(now_ms),
        trigger_received_at_us=ev.received_at_us,
        traceparent=traceparent,
    )


def alert_of_firing(firing: Firing, now_ms: int, traceparent: str = "") -> apb.Alert:
    u = firing.update
    last = u.last or pb.Event()
    return apb.Alert(
        alert_id=firing.alert_id,
        rule=u.rule.name,
        title=u.rule.title,
        severity=u.rule.severity,  # type: ignore[arg-type]
        wedding_id=last.wedding_id,
        organization_id=last.organization_id,
        user_id=last.user_id,
        group=_group_text(u),
        count=firing.count,
        event_ids=u.event_ids,
        explanation=_explain(u.rule, u, firing.count),
        created_at=_ts(firing.created_ms),
        updated_at=_ts(now_ms),
        trigger_received_at_us=u.first_received_us,
        traceparent=traceparent,
    )


def matches(alert: apb.Alert, f: apb.AlertFilter) -> bool:
    """Whether an alert passes a subscriber's or a listing's filter."""
    if f.wedding_id and alert.wedding_id != f.wedding_id:
        return False
    if f.organization_id and alert.organization_id != f.organization_id:
        return False
    if f.rule and alert.rule != f.rule:
        return False
    # Severities count down: P0_CRITICAL (1) is the most severe.
    return not (f.min_severity and alert.severity > f.min_severity)


class BadPageToken(ValueError):
    """A page token that is malformed or belongs to another filter."""


@dataclass
class AlertPage:
    alerts: list[apb.Alert]
    next_page_token: str


def _scopes(alert: apb.Alert) -> list[str]:
    scopes = ["all"]
    if alert.wedding_id:
        scopes.append("w:" + alert.wedding_id)
    if alert.organization_id:
        scopes.append("o:" + alert.organization_id)
    return scopes


def _filter_digest(f: apb.AlertFilter, since_ms: int, until_ms: int) -> str:
    """Binds a page token to the listing it came from (filter and requested time range)."""
    bound = f.SerializeToString(deterministic=True) + f"|{since_ms}|{until_ms}".encode()
    return hashlib.sha256(bound).hexdigest()[:16]


async def _answer(future: Any, on_answer: Callable[[], None] | None = None) -> Any:
    """A driver request's rows (or its error), awaited without blocking the loop; ``on_answer``
    runs on the driver's thread once Cassandra has answered."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(rows: Any, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(rows)

    def answered(rows: Any, exc: BaseException | None = None) -> None:
        if on_answer is not None:
            on_answer()
        loop.call_soon_threadsafe(settle, rows, exc)

    future.add_callbacks(answered, lambda exc: answered(None, exc))
    return await done


async def _execute(session: Any, statement: Any, params: Sequence[Any] = ()) -> Any:
    """Run one statement on the driver's threads and wait for it without blocking the loop."""
    return await _answer(session.execute_async(statement, params or None, timeout=REQUEST_TIMEOUT_S))


async def _send(session: Any, batch: cqlbatch.EncodedBatch) -> None:
    """Send an encoded batch and wait for its answer. The driver's request is in a reference
    cycle that only the cyclic collector frees: emptying the answered batch frees its rows now."""
    await _answer(cqlbatch.execute(session, batch, REQUEST_TIMEOUT_S), batch.clear)


class AlertStore:
    """Alerts and dead letters in the deployment's keyspace (the schema must exist)."""

    def __init__(self, session: Any, keyspace: str, max_batch_bytes: int) -> None:
        """``max_batch_bytes``: the event store's bound (``StoreConfig.max_batch_bytes``); an alert
        batch may span partitions, so Cassandra's batch size limits apply to it."""
        self._session = session
        self._keyspace = keyspace
        self._max_batch_bytes = max_batch_bytes
        self._statements: dict[str, Any] = {}

    def _stmt(self, name: str) -> Any:
        """Prepared on first use, so a service starts on a keyspace whose alert tables are
        still missing (``auditmesh schema`` creates them) and fails only the alert calls."""
        found = self._statements.get(name)
        if found is None:
            ks = self._keyspace
            text = {
                "put": f"INSERT INTO {ks}.alerts (scope, day, created_at, alert_id, rule, severity, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                "page": f"SELECT created_at, alert_id, payload FROM {ks}.alerts"
                " WHERE scope = ? AND day = ? AND (created_at, alert_id) < (?, ?) LIMIT ?",
                "dead": f"INSERT INTO {ks}.alert_dead_letters"
                " (day, failed_at, alert_id, url, attempts, error, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                "dead_read": f"SELECT failed_at, alert_id, url, attempts, error FROM {ks}.alert_dead_letters"
                " WHERE day = ?",
            }[name]
            found = self._session.prepare(text)
            if name == "put":  # checked before it is kept: a mismatch fails every write, not the first
                rowcodec.check_columns(found, rowcodec.ALERT_TYPES)
            self._statements[name] = found
        return found

    async def put(self, alerts: Iterable[apb.Alert]) -> None:
        """Write each alert's rows (one per scope), encoded by :mod:`auditmesh.rowcodec`, in
        unlogged batches of the rows owned by the same replicas (one batch on a single node):
        the alerts of a round, or of many rounds written together, cost a request or a few, not
        one per row. Rows of one alert id repeated in ``alerts`` are written once, the last one."""
        insert = self._stmt("put")
        query_id = insert.query_id
        partitions: dict[tuple[str, int], cqlbatch.Partition] = {}
        for alert in {a.alert_id: a for a in alerts}.values():
            created = _ms(alert.created_at)
            day = created // _DAY_MS
            day_bytes = rowcodec.int32(day)
            tail = rowcodec.alert_tail(
                created, alert.alert_id.encode(), alert.rule.encode(), alert.severity, alert.SerializeToString()
            )
            for scope in _scopes(alert):
                partition = partitions.get((scope, day))
                if partition is None:
                    partition = partitions[(scope, day)] = cqlbatch.partition(query_id, 7, scope, day_bytes)
                partition.rows.append(partition.head + tail)
        metadata = self._session.cluster.metadata
        single_node = len(metadata.all_hosts()) <= 1
        groups: dict[Any, list[cqlbatch.Run]] = {}
        for partition in partitions.values():
            owner = None if single_node else frozenset(metadata.get_replicas(self._keyspace, partition.route))
            groups.setdefault(owner, []).append((partition.route, partition.rows))
        chunks = [chunk for runs in groups.values() for chunk in cqlbatch.byte_chunks(runs, self._max_batch_bytes)]
        await asyncio.gather(*(_send(self._session, cqlbatch.EncodedBatch(c, self._keyspace)) for c in chunks))

    async def dead_letter(self, alert: apb.Alert, url: str, attempts: int, error: str) -> None:
        now = int(time.time() * 1000)
        params = (now // _DAY_MS, now, alert.alert_id, url, attempts, error[:500], alert.SerializeToString())
        await _execute(self._session, self._stmt("dead"), params)

    async def dead_letters(self, day_ms: int) -> list[tuple[str, str, int, str]]:
        rows = await _execute(self._session, self._stmt("dead_read"), (day_ms // _DAY_MS,))
        return [(r.alert_id, r.url, r.attempts, r.error) for r in rows]

    async def list(
        self, f: apb.AlertFilter, *, since_ms: int = 0, until_ms: int = 0, page_size: int = 0, page_token: str = ""
    ) -> AlertPage:
        digest = _filter_digest(f, since_ms, until_ms)
        until_ms = until_ms or int(time.time() * 1000) + 1
        since_ms = since_ms or until_ms - _DEFAULT_RANGE_MS
        size = min(page_size or 100, _MAX_PAGE)
        scope = "w:" + f.wedding_id if f.wedding_id else ("o:" + f.organization_id if f.organization_id else "all")
        day, created, alert_id = until_ms // _DAY_MS, until_ms, "\uffff"
        if page_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(page_token.encode()))
                if token["f"] != digest:
                    raise BadPageToken("page_token belongs to another filter")
                day, created, alert_id = int(token["d"]), int(token["c"]), str(token["a"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BadPageToken(f"page_token: {exc}") from exc
        out: list[apb.Alert] = []
        scanned = 0
        while day >= since_ms // _DAY_MS and len(out) < size and scanned < _MAX_SCAN_ROWS:
            rows = list(await _execute(self._session, self._stmt("page"), (scope, day, created, alert_id, size * 2)))
            for row in rows:
                scanned += 1
                created, alert_id = _row_ms(row.created_at), row.alert_id
                if created < since_ms:
                    return AlertPage(out, "")
                alert = apb.Alert.FromString(row.payload)
                if matches(alert, f):
                    out.append(alert)
                    if len(out) == size:
                        break
            if len(out) < size and len(rows) < size * 2:
                day, created, alert_id = day - 1, day * _DAY_MS, "\uffff"
        if day < since_ms // _DAY_MS:
            return AlertPage(out, "")
        token = {"f": digest, "d": day, "c": created, "a": alert_id}
        return AlertPage(out, base64.urlsafe_b64encode(json.dumps(token).encode()).decode())


def _row_ms(value: dt.datetime) -> int:
    """The driver's timestamps are naive UTC datetimes."""
    return (value.replace(tzinfo=None) - _EPOCH) // dt.timedelta(milliseconds=1)
