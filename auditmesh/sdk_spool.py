"""The SDK's opt-in spool: unacknowledged batches in a local file, so that a process that dies
while the mesh is unreachable loses nothing it had spooled (like Vector's disk buffers or the
OpenTelemetry Collector's persistent queue).

The SDK's background thread appends each batch it makes (never ``log()``) and, once the batch
is acknowledged, an ack record; a client started on the same directory resends every batch
without an ack record, with its original event ids (storage is idempotent by event id). The
file is one log of records::

    magic "AMS1" | kind (1 byte: B batch, A ack) | length (uint32) | crc32 of kind + payload | payload

A batch's payload is one flag byte (critical), the batch id (uint16 length, then UTF-8) and
the serialized ``EventBatch``; an ack's is the batch id.

Reading stops at the first record that is truncated or fails its checksum (the tail a crash
may leave): the rest is skipped and counted, never an error, and the file is cut
there so that new records follow good ones. When nothing is left unacknowledged the file is
emptied; when it holds mostly acknowledged records it is rewritten with the live ones only.

Bounded in bytes like the SDK's memory: past ``max_bytes`` of live batches, non-critical
batches are not spooled (counted; they are still sent from memory), critical ones always are.
Writes go to the page cache (no fsync): a spooled batch survives the process being killed, not
the machine losing power. One process at a time owns a directory (an exclusive ``flock``).
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpoolBusy", "SpooledBatch"]

_MAGIC = b"AMS1"
_HEADER = struct.Struct("<4scII")  # magic, kind, length, crc32
_BATCH, _ACK = b"B", b"A"
_MAX_RECORD = 64 * 1024 * 1024
FILE_NAME = "spool.log"


class SpoolBusy(RuntimeError):
    """Another process owns the spool directory."""


@dataclass(frozen=True)
class SpooledBatch:
    batch_id: str
    critical: bool
    data: bytes  # a serialized EventBatch


class Spool:
    """The spool file of one directory, owned by this process until :meth:`close`."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / FILE_NAME
        self.max_bytes = max_bytes
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open until close()
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise SpoolBusy(f"{self.path} is in use by another process") from None
        self._live: dict[str, tuple[bool, int]] = {}  # batch id -> (critical, payload bytes)
        self.live_bytes = 0
        self.corrupt_records = 0  # records skipped at open: a truncated or corrupt tail
        self.corrupt_bytes = 0
        self.overflow_batches = 0  # non-critical batches not spooled over max_bytes
        self.recovered = self._read()

    # ---- reading what a previous process left -------------------------------------------------

    def _read(self) -> list[SpooledBatch]:
        self._file.seek(0)
        raw = self._file.read()
        batches: dict[str, SpooledBatch] = {}
        offset = 0
        while offset < len(raw):
            header_end = offset + _HEADER.size
            if header_end > len(raw):
                break  # a truncated header
            magic, kind, length, crc = _HEADER.unpack_from(raw, offset)
            end = header_end + length
            if magic != _MAGIC or kind not in (_BATCH, _ACK) or length > _MAX_RECORD or end > len(raw):
                break
            payload = raw[header_end:end]
            if zlib.crc32(kind + payload) != crc:
                break
            if kind == _BATCH:
                batch_id, data = _split(payload)
                batches[batch_id] = SpooledBatch(batch_id, payload[0] == 1, data)
            elif kind == _ACK:
                batches.pop(payload.decode("utf-8", "replace"), None)
            offset = end
        if offset < len(raw):
            self.corrupt_records = 1 + _count_records_after(raw, offset)
            self.corrupt_bytes = len(raw) - offset
            self._file.truncate(offset)
        for batch in batches.values():
            self._live[batch.batch_id] = (batch.critical, len(batch.data))
            self.live_bytes += len(batch.data)
        self._file.seek(0, os.SEEK_END)
        return list(batches.values())

    # ---- the SDK thread's writes --------------------------------------------------------------

    def append(self, batch_id: str, critical: bool, data: bytes) -> bool:
        """Spool one batch; False (counted) for a non-critical batch over the byte bound."""
        if not critical and self.live_bytes + len(data) > self.max_bytes:
            self.overflow_batches += 1
            return False
        bid = batch_id.encode()
        self._write(_BATCH, (b"\x01" if critical else b"\x00") + struct.pack("<H", len(bid)) + bid + data)
        self._live[batch_id] = (critical, len(data))
        self.live_bytes += len(data)
        return True

    def ack(self, batch_id: str) -> None:
        """Forget a batch once it is acknowledged (or settled otherwise)."""
        entry = self._live.pop(batch_id, None)
        if entry is None:
            return
        self.live_bytes -= entry[1]
        if not self._live:
            self._file.truncate(0)  # nothing left to resend: start over
            self._file.seek(0)
            return
        self._write(_ACK, batch_id.encode())
        if self._file.tell() > 4 * max(self.live_bytes, 1024 * 1024):
            self._compact()

    def _write(self, kind: bytes, payload: bytes) -> None:
        record = _HEADER.pack(_MAGIC, kind, len(payload), zlib.crc32(kind + payload)) + payload
        self._file.write(record)
        self._file.flush()  # into the page cache: a killed process loses nothing written

    def _compact(self) -> None:
        """Rewrite the file with the live batches only (a new file renamed over the old one)."""
        self._file.seek(0)
        raw = self._file.read()
        keep: list[bytes] = []
        offset = 0
        while offset + _HEADER.size <= len(raw):
            _, kind, length, _ = _HEADER.unpack_from(raw, offset)
            end = offset + _HEADER.size + length
            if kind == _BATCH and _split(raw[offset + _HEADER.size : end])[0] in self._live:
                keep.append(raw[offset:end])
            offset = end
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(keep))
        os.replace(tmp, self.path)
        old = self._file
        self._file = open(self.path, "a+b")  # noqa: SIM115
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        old.close()
        self._file.seek(0, os.SEEK_END)

    @property
    def live_batches(self) -> int:
        return len(self._live)

    def close(self) -> None:
        self._file.close()


def _split(payload: bytes) -> tuple[str, bytes]:
    """(batch id, serialized EventBatch) of a batch record's payload (checksummed already)."""
    (length,) = struct.unpack_from("<H", payload, 1)
    return payload[3 : 3 + length].decode("utf-8", "replace"), payload[3 + length :]


def _count_records_after(raw: bytes, offset: int) -> int:
    """Whole records that follow a bad one (found by their magic), for the skipped count."""
    return max(raw.count(_MAGIC, offset + 1), 0)
