"""Masking of secrets in event attributes at ingest, before anything stores, traces or logs them."""

from __future__ import annotations

import re
from collections.abc import Iterable

from auditpb.v1 import audit_pb2 as pb

__all__ = ["MASK", "REDACTED_ATTRIBUTE", "Redactor"]

MASK = "[REDACTED]"
REDACTED_ATTRIBUTE = "auditmesh.redacted"
"""The attribute that lists, comma separated and sorted, the keys of an event whose values were masked."""
_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Masks whole values of the configured keys, and matches of the pattern (and card numbers)
    inside any value."""

    def __init__(self, keys: Iterable[str], pattern: str = "", *, cards: bool = True) -> None:
        self._keys = frozenset(k.lower() for k in keys)
        self._pattern = re.compile(pattern) if pattern else None
        self._cards = cards

    @property
    def active(self) -> bool:
        return bool(self._keys or self._pattern or self._cards)

    def _mask_card(self, match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        return MASK if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)

    def _clean(self, value: str) -> str:
        if self._pattern is not None:
            value = self._pattern.sub(MASK, value)
        if self._cards and any(c.isdigit() for c in value):
            value = _CARD.sub(self._mask_card, value)
        return value

    def redact(self, event: pb.Event) -> list[str]:
        """Mask ``event``'s attributes in place; returns the keys masked (and records them on the
        event in :data:`REDACTED_ATTRIBUTE`)."""
        masked: list[str] = []
        attributes = event.attributes
        if not attributes:
            return masked
        for key in list(attributes):
            if key == REDACTED_ATTRIBUTE:
                continue
            value = attributes[key]
            if key.lower() in self._keys:
                cleaned = MASK
            else:
                cleaned = self._clean(value)
            if cleaned != value:
                attributes[key] = cleaned
                masked.append(key)
        if masked:
            masked.sort()
            attributes[REDACTED_ATTRIBUTE] = ",".join(masked)
        elif REDACTED_ATTRIBUTE in attributes:
            del attributes[REDACTED_ATTRIBUTE]  # only ingest says what it masked
        return masked
