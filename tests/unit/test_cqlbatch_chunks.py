"""How a write is cut into batch statements: bounded in rows and in bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from auditmesh.cqlbatch import BATCH_ROWS, ROW_OVERHEAD, byte_chunks


def run(route: bytes, sizes: list[int]) -> tuple[bytes, list[bytes]]:
    """A partition's rows of the given encoded sizes; each names its route and position (padded
    to its size) so chunks can be checked."""
    rows = [f"{route.decode()}:{i}:".encode() for i in range(len(sizes))]
    return route, [row + b"x" * max(0, size - len(row)) for row, size in zip(rows, sizes, strict=True)]


@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=150), max_size=12),
    st.integers(16_384, 200_000),
)
def test_chunks_keep_order_and_stay_under_both_bounds(partitions: list[list[int]], max_bytes: int) -> None:
    """Every row is in exactly one chunk, in order; no chunk passes the row bound, and none
    passes the byte bound unless it is a single row larger than the bound on its own; each
    chunk is routed by the partition of its first row."""
    runs = [run(f"p{i}".encode(), sizes) for i, sizes in enumerate(partitions)]
    chunks = list(byte_chunks(runs, max_bytes))
    assert [row for _, rows in chunks for row in rows] == [row for _, rows in runs for row in rows]
    for route, rows in chunks:
        assert 1 <= len(rows) <= BATCH_ROWS
        assert route == rows[0].split(b":")[0]
        total = sum(ROW_OVERHEAD + len(row) for row in rows)
        assert total <= max_bytes or len(rows) == 1


def test_rows_at_the_event_limit_are_cut_by_bytes_not_rows() -> None:
    """100 rows of ~10 KB (events at the documented limits) make several statements, not one
    of ~1 MB that the store refuses."""
    chunks = list(byte_chunks([run(b"p", [10_000] * 100)], 128 * 1024))
    assert len(chunks) == 9
    assert max(len(rows) for _, rows in chunks) == 12
