"""The store's own value encoding produces exactly the bytes cassandra-driver's bind would."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import ConsistencyLevel, cqltypes
from cassandra.protocol import BatchMessage, ProtocolHandler
from cassandra.query import BatchType, SimpleStatement
from hypothesis import given
from hypothesis import strategies as st

from auditmesh import rowcodec
from auditmesh.cqlbatch import EncodedBatchMessage
from auditmesh.errors import PermanentError
from auditpb.v1 import audit_pb2 as pb

V4 = 4
_DRIVER_TYPES = {
    "text": cqltypes.VarcharType,
    "int": cqltypes.Int32Type,
    "timestamp": cqltypes.DateType,
    "tinyint": cqltypes.ByteType,
    "blob": cqltypes.BytesType,
}


@given(
    ms=st.integers(min_value=-(2**62), max_value=2**62),
    event_id=st.text(max_size=40),
    severity=st.sampled_from(list(pb.Severity.values())),
    outcome=st.sampled_from(list(pb.Outcome.values())),
    event_type=st.text(max_size=40),
    organization_id=st.text(max_size=40),
)
def test_event_values_match_the_driver(
    ms: int, event_id: str, severity: int, outcome: int, event_type: str, organization_id: str
) -> None:
    ev = pb.Event(
        event_id=event_id,
        severity=severity,  # type: ignore[arg-type]
        outcome=outcome,  # type: ignore[arg-type]
        event_type=event_type,
        organization_id=organization_id,
    )
    plain = (ms, event_id, severity, outcome, event_type, organization_id, ev.SerializeToString())
    expected = tuple(
        _DRIVER_TYPES[kind].serialize(value, V4) for kind, value in zip(rowcodec.EVENT_VALUE_TYPES, plain, strict=True)
    )
    assert rowcodec.event_values(ms, ev) == expected


@given(key=st.text(max_size=200), bucket=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_keys_and_routing_match_the_driver(key: str, bucket: int) -> None:
    key_bytes, bucket_bytes = rowcodec.text(key), rowcodec.int32(bucket)
    assert key_bytes == cqltypes.VarcharType.serialize(key, V4)
    assert bucket_bytes == cqltypes.Int32Type.serialize(bucket, V4)
    statement = SimpleStatement("")
    statement.routing_key = [key_bytes, bucket_bytes]
    assert rowcodec.routing_key(key_bytes, bucket_bytes) == statement.routing_key
    assert rowcodec.routing_key(key_bytes) == key_bytes
    statement.routing_key = [key_bytes, bucket_bytes, key_bytes]
    assert rowcodec.routing_key(key_bytes, bucket_bytes, key_bytes) == statement.routing_key
    query_id = bytes(range(16))
    head = rowcodec.statement_head(query_id, 9)
    assert rowcodec.keyed_head(head, key_bytes, bucket_bytes) == (
        rowcodec.routing_key(key_bytes, bucket_bytes),
        rowcodec.statement_head(query_id, 9, key_bytes, bucket_bytes),
    )


def _prepared(*types: type) -> SimpleNamespace:
    columns = [SimpleNamespace(name=f"c{i}", type=t) for i, t in enumerate(types)]
    return SimpleNamespace(column_metadata=columns, query_string="INSERT ...")


def test_check_columns_accepts_the_schema_and_names_a_mismatch() -> None:
    rowcodec.check_columns(
        _prepared(cqltypes.VarcharType, cqltypes.VarcharType, cqltypes.Int32Type), rowcodec.PARTITION_TYPES
    )
    with pytest.raises(PermanentError, match=r"c2.*expected \['text', 'text', 'int'\]"):
        rowcodec.check_columns(
            _prepared(cqltypes.VarcharType, cqltypes.VarcharType, cqltypes.LongType), rowcodec.PARTITION_TYPES
        )


@given(
    rows=st.lists(
        st.tuples(
            st.integers(min_value=-(2**62), max_value=2**62),
            st.text(max_size=40),
            st.sampled_from(list(pb.Severity.values())),
            st.sampled_from(list(pb.Outcome.values())),
            st.text(max_size=40),
            st.text(max_size=40),
            st.text(max_size=60),
        ),
        min_size=1,
        max_size=20,
    ),
    timestamp=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
)
def test_encoded_batches_are_the_drivers_batch_messages(
    rows: list[tuple[int, str, int, int, str, str, str]], timestamp: int | None
) -> None:
    """A batch of rows encoded by statement_head and event_tail, sent through the store's
    BATCH message, is byte for byte the message the driver makes of the same rows bound
    value by value (batch type, statements, consistency, flags, timestamp)."""
    query_id, bucket = b"q" * 16, rowcodec.int32(12)
    triples, encoded = [], []
    for ms, event_id, severity, outcome, event_type, organization_id, key in rows:
        ev = pb.Event(
            event_id=event_id,
            severity=severity,  # type: ignore[arg-type]
            outcome=outcome,  # type: ignore[arg-type]
            event_type=event_type,
            organization_id=organization_id,
        )
        key_bytes = rowcodec.text(key)
        triples.append((True, query_id, (key_bytes, bucket, *rowcodec.event_values(ms, ev))))
        head = rowcodec.statement_head(query_id, 9, key_bytes, bucket)
        encoded.append(head + rowcodec.event_tail(ms, ev, rowcodec.text(event_id), ev.SerializeToString()))

    def message(queries: list[Any]) -> Any:
        return BatchMessage(BatchType.UNLOGGED, queries, ConsistencyLevel.LOCAL_QUORUM, None, timestamp, None)

    ours = EncodedBatchMessage(message([]), encoded)
    expected = ProtocolHandler.encode_message(message(triples), 3, V4, None, False)
    assert ProtocolHandler.encode_message(ours, 3, V4, None, False) == expected


@given(
    created_ms=st.integers(min_value=-(2**62), max_value=2**62),
    alert_id=st.text(max_size=40),
    rule=st.text(max_size=40),
    severity=st.sampled_from(list(pb.Severity.values())),
    payload=st.binary(max_size=300),
)
def test_alert_values_match_the_driver(
    created_ms: int, alert_id: str, rule: str, severity: int, payload: bytes
) -> None:
    """An alert row's values after its key are, length by length, what the driver binds."""
    plain = (created_ms, alert_id, rule, severity, payload)
    expected = b"".join(
        rowcodec.value(_DRIVER_TYPES[kind].serialize(v, V4))
        for kind, v in zip(rowcodec.ALERT_TYPES[2:], plain, strict=True)
    )
    assert rowcodec.alert_tail(created_ms, alert_id.encode(), rule.encode(), severity, payload) == expected
