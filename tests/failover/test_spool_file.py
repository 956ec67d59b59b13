"""The spool file alone (a pure unit, no services): what was appended and not acknowledged comes
back, a truncated or corrupt tail is skipped and counted, never raised, the byte bound spares
critical batches, and one process at a time owns a directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditmesh.sdk_spool import FILE_NAME, Spool, SpoolBusy


def _fill(directory: Path, count: int = 5, *, max_bytes: int = 1 << 20) -> None:
    spool = Spool(directory, max_bytes)
    for i in range(count):
        assert spool.append(f"b{i}", critical=i == 0, data=f"batch {i}".encode() * 10)
    spool.ack("b1")
    spool.close()


def test_unacknowledged_batches_come_back(tmp_path: Path) -> None:
    """A spool reopened holds every appended batch that was not acknowledged, with its flag."""
    _fill(tmp_path)
    spool = Spool(tmp_path)
    assert {b.batch_id: (b.critical, b.data) for b in spool.recovered} == {
        "b0": (True, b"batch 0" * 10),
        "b2": (False, b"batch 2" * 10),
        "b3": (False, b"batch 3" * 10),
        "b4": (False, b"batch 4" * 10),
    }
    assert spool.corrupt_records == 0
    for batch in spool.recovered:
        spool.ack(batch.batch_id)
    assert (tmp_path / FILE_NAME).stat().st_size == 0  # nothing left: the file is emptied
    spool.close()
    assert Spool(tmp_path).recovered == []


@pytest.mark.parametrize("cut", [1, 7, 14])  # the last record (the ack of b1) is 15 bytes
def test_a_truncated_tail_is_skipped_and_counted(tmp_path: Path, cut: int) -> None:
    """A record cut short by a crash is skipped and counted; the records before it come back."""
    _fill(tmp_path)
    path = tmp_path / FILE_NAME
    path.write_bytes(path.read_bytes()[:-cut])
    spool = Spool(tmp_path)
    # The last record is the ack of b1, cut: b1 comes back too, its ack never having been written.
    assert sorted(b.batch_id for b in spool.recovered) == ["b0", "b1", "b2", "b3", "b4"]
    assert spool.corrupt_records == 1 and spool.corrupt_bytes > 0
    spool.append("b9", critical=False, data=b"after")  # new records follow the good ones
    spool.close()
    again = Spool(tmp_path)
    assert "b9" in {b.batch_id for b in again.recovered} and again.corrupt_records == 0


def test_a_corrupt_record_is_skipped_with_what_follows(tmp_path: Path) -> None:
    """A record whose checksum fails ends the read there, counted with the records after it."""
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(f"b{i}", critical=False, data=b"x" * 100)
    spool.close()
    path = tmp_path / FILE_NAME
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(raw))
    reopened = Spool(tmp_path)
    assert [b.batch_id for b in reopened.recovered] == ["b0"]
    assert reopened.corrupt_records == 2


def test_the_byte_bound_spares_critical_batches(tmp_path: Path) -> None:
    """Past max_bytes a normal batch is not spooled (counted); a critical one always is."""
    spool = Spool(tmp_path, max_bytes=250)
    assert spool.append("a", critical=False, data=b"x" * 200)
    assert not spool.append("b", critical=False, data=b"x" * 100)
    assert spool.append("c", critical=True, data=b"x" * 100)
    assert spool.overflow_batches == 1 and spool.live_bytes == 300
    spool.close()
    assert sorted(b.batch_id for b in Spool(tmp_path).recovered) == ["a", "c"]


def test_one_owner_per_directory(tmp_path: Path) -> None:
    """A second spool on a directory in use is refused."""
    spool = Spool(tmp_path)
    with pytest.raises(SpoolBusy):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def test_acknowledged_records_are_compacted_away(tmp_path: Path) -> None:
    """A file of mostly acknowledged records is rewritten with the live batches only."""
    spool = Spool(tmp_path)
    spool.append("keep", critical=False, data=b"k" * 1000)
    for i in range(600):
        spool.append(f"b{i}", critical=False, data=b"x" * 10_000)
        spool.ack(f"b{i}")
    assert (tmp_path / FILE_NAME).stat().st_size < 4 * 1024 * 1024 + 20_000
    spool.close()
    assert [b.batch_id for b in Spool(tmp_path).recovered] == ["keep"]
