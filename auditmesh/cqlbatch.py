"""Unlogged batches of statements encoded by :mod:`auditmesh.rowcodec`, sent through cassandra-driver.

The driver builds each request as for any batch (routing, retries, timestamps, consistency), and
the statements go into its BATCH message as the bytes they were encoded to, not bound value by
value. Used by the event store and the alert store; the tables and their values are theirs.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from cassandra.cluster import EXEC_PROFILE_DEFAULT, ResponseFuture, Session
from cassandra.protocol import BatchMessage
from cassandra.query import BatchStatement, BatchType

from auditmesh import rowcodec

__all__ = [
    "BATCH_ROWS",
    "ROW_OVERHEAD",
    "Chunk",
    "EncodedBatch",
    "EncodedBatchMessage",
    "Partition",
    "Run",
    "byte_chunks",
    "execute",
    "partition",
]

BATCH_ROWS = 100
"""Most statements in one batch."""
ROW_OVERHEAD = 200
"""Per-row bytes Cassandra counts on top of the encoded values (cell timestamps, TTLs, flags)."""
_SHORT = struct.Struct(">H").pack

Run = tuple[bytes, list[bytes]]
"""The rows of one partition: its routing key and the rows, each an encoded statement of a
BATCH message (:func:`rowcodec.statement_head` and its values)."""
Chunk = tuple[bytes, list[bytes]]
"""The rows of one batch statement and the routing key it is sent with."""


class Partition(NamedTuple):
    """The rows of one partition as they are encoded: its encoded key columns, routing key,
    the start every row's statement shares (statement id and key values), and the rows."""

    key: tuple[bytes, bytes]
    route: bytes
    head: bytes
    rows: list[bytes]


_HEADS: dict[tuple[bytes, int], bytes] = {}
"""The statement start (no values yet) of each prepared insert: a handful, one per statement."""


def partition(query_id: bytes, count: int, key: str, second: bytes) -> Partition:
    """An empty partition of a table keyed by (text ``key``, encoded ``second``) whose insert
    ``query_id`` binds ``count`` values."""
    first = key.encode()
    head = _HEADS.get((query_id, count))
    if head is None:
        head = _HEADS[(query_id, count)] = rowcodec.statement_head(query_id, count)
    route, start = rowcodec.keyed_head(head, first, second)
    return Partition((first, second), route, start, [])


class EncodedBatch(BatchStatement):  # type: ignore[misc]
    """An unlogged batch whose statements are already encoded (``rows``); sent by :func:`execute`."""

    rows: list[bytes]

    def __init__(self, chunk: Chunk, keyspace: str, consistency_level: int | None = None) -> None:
        super().__init__(batch_type=BatchType.UNLOGGED, consistency_level=consistency_level)
        self.routing_key, self.rows = chunk
        self.keyspace = keyspace

    def clear(self) -> None:
        super().clear()
        self.rows = []


class EncodedBatchMessage(BatchMessage):  # type: ignore[misc]
    """The driver's BATCH message for an :class:`EncodedBatch`: the driver writes the frame
    around the statements (type, consistency, flags, timestamp) as for any batch, and the
    statements go in as the bytes they were encoded to."""

    def __init__(self, message: Any, rows: list[bytes]) -> None:
        self.__dict__.update(message.__dict__)
        self.rows = rows

    def send_body(self, f: Any, protocol_version: int) -> None:
        rows, self.queries = self.rows, ()
        frame = io.BytesIO()
        BatchMessage.send_body(self, frame, protocol_version)  # the frame of an empty batch
        body = frame.getvalue()
        f.write(body[:1])  # the batch type
        f.write(_SHORT(len(rows)))
        f.write(b"".join(rows))
        f.write(body[3:])  # what follows the empty batch's statement count: consistency, flags


def execute(session: Session, batch: EncodedBatch, timeout: float) -> ResponseFuture:
    """``session.execute_async(batch)`` with the BATCH message's statements as encoded: the
    driver builds its request for the batch as usual, and its message is swapped for one that
    writes the encoded rows."""
    future = session._create_response_future(batch, None, False, {}, timeout, EXEC_PROFILE_DEFAULT, None, None)
    future.message = EncodedBatchMessage(future.message, batch.rows)
    future._protocol_handler = session.client_protocol_handler
    session._on_request(future)
    future.send_request()
    return future


def byte_chunks(runs: Iterable[Run], max_bytes: int) -> Iterable[Chunk]:
    """The rows of consecutive runs, in order, cut into chunks of at most ``BATCH_ROWS`` rows
    and ``max_bytes`` bytes (each row's encoded length and ``ROW_OVERHEAD``); each chunk
    carries the routing key of the run its first row came from."""
    chunk: list[bytes] = []
    size = 0
    route = b""
    for run_route, rows in runs:
        if not chunk:
            route = run_route
        total = sum(map(len, rows)) + ROW_OVERHEAD * len(rows)
        if len(chunk) + len(rows) <= BATCH_ROWS and size + total <= max_bytes:  # the whole run fits
            chunk.extend(rows)
            size += total
            continue
        for row in rows:
            cost = ROW_OVERHEAD + len(row)
            if chunk and (len(chunk) == BATCH_ROWS or size + cost > max_bytes):
                yield route, chunk
                chunk, size = [], 0
            if not chunk:
                route = run_route
            chunk.append(row)
            size += cost
    if chunk:
        yield route, chunk
