"""One lane's share of a batch on its way to a processor, serialized event by event as it is built.

On the wire it is a ``ProcessRequest``; in ingest it is never one. Appending a parsed event to a
message's repeated field copies it, and with upb a copy costs several times what serializing the
event does (about 1.5 against 0.5 us per event on this project's hosts), so each event is
serialized once, when its lane is known, and the request's bytes are its header followed by the
events' encoded ``events`` fields. Protobuf's encoding of a message is the concatenation of its
fields' encodings in any order, so a processor parses exactly the ``ProcessRequest`` that holding
the same events would have serialized to (``tests/unit/test_forward.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from auditpb.v1 import audit_pb2 as pb

__all__ = ["Forward"]

_EVENTS_TAG = bytes([pb.ProcessRequest.EVENTS_FIELD_NUMBER << 3 | 2])  # length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PREFIXES = [_EVENTS_TAG + _varint(n) for n in range(1 << 14)]
"""The tag and length of an encoded event of up to 16 KiB (most are a few hundred bytes)."""


class Forward:
    """A ``ProcessRequest``'s lane, sequence number, traceparent and events, the events already
    encoded; ``received_at_us`` is the first event's, read by the hand-off timings."""

    __slots__ = ("_parts", "count", "lane", "received_at_us", "seq", "size", "traceparent")

    def __init__(self, lane: int, events: Iterable[pb.Event] = ()) -> None:
        self.lane = pb.Lane.ValueType(lane)
        self.seq = 0
        self.traceparent = ""
        self.count = 0
        """Events in the request."""
        self.size = 0
        """Bytes of the encoded events."""
        self.received_at_us = 0
        self._parts: list[bytes] = []
        for ev in events:
            self.add(ev)

    def add(self, ev: pb.Event) -> None:
        """Append ``ev`` as it is now: later changes to it are not sent."""
        data = ev.SerializeToString()
        n = len(data)
        prefix = _PREFIXES[n] if n < 1 << 14 else _EVENTS_TAG + _varint(n)
        self._parts += (prefix, data)
        self.count += 1
        self.size += len(prefix) + n
        if self.count == 1:
            self.received_at_us = ev.received_at_us

    def serialize(self) -> bytes:
        """The bytes of the ``ProcessRequest`` (header fields, then the events)."""
        header = pb.ProcessRequest(seq=self.seq, lane=self.lane, traceparent=self.traceparent)
        return header.SerializeToString() + b"".join(self._parts)

    def request(self) -> pb.ProcessRequest:
        """The ``ProcessRequest`` these bytes encode (for tools and tests; the link sends bytes)."""
        return pb.ProcessRequest.FromString(self.serialize())
