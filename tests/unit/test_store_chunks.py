"""How a write is cut into batch statements: bounded in rows and in bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from auditmesh.store import _BATCH_ROWS, _ROW_OVERHEAD, _byte_chunks


def entry(size: int) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    return (b"route", b"query", (b"x" * size,))


@given(st.lists(st.integers(min_value=0, max_value=40_000), max_size=400), st.integers(16_384, 200_000))
def test_chunks_keep_order_and_stay_under_both_bounds(sizes: list[int], max_bytes: int) -> None:
    """Every row is in exactly one chunk, in order; no chunk passes the row bound, and none
    passes the byte bound unless it is a single row larger than the bound on its own."""
    entries = [entry(size) for size in sizes]
    chunks = list(_byte_chunks(entries, max_bytes))
    assert [e for chunk in chunks for e in chunk] == entries
    for chunk in chunks:
        assert 1 <= len(chunk) <= _BATCH_ROWS
        total = sum(_ROW_OVERHEAD + len(e[2][0]) for e in chunk)
        assert total <= max_bytes or len(chunk) == 1


def test_rows_at_the_event_limit_are_cut_by_bytes_not_rows() -> None:
    """100 rows of ~10 KB (events at the documented limits) make several statements, not one
    of ~1 MB that the store refuses."""
    chunks = list(_byte_chunks([entry(10_000)] * 100, 128 * 1024))
    assert len(chunks) == 9
    assert max(len(c) for c in chunks) == 12
