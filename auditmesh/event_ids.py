"""Event ids: the SDK's format, and the partition of an id's locator row.

The SDK names events ``{client}-{sequence}``: 16 hex digits drawn at random per AuditClient,
a dash, then a hex counter. ``GetEvent`` finds an event through ``events_by_id``, whose
partition is derived from the id alone. SDK ids of one client share a partition per 4,096
consecutive sequence numbers, so the locator rows of a 500-event batch merge into one or two
partition updates instead of 500; a storage-attached index on ``event_id`` (one index entry
per event) cost about a third of the store's write capacity (docs/performance.md). Any other
id gets a partition of its own. Every id maps to exactly one partition, so a lookup never
depends on who made the id, only its cost does.
"""

from __future__ import annotations

import os
import re

__all__ = ["BLOCK_BITS", "locator_partition", "new_client_prefix"]

BLOCK_BITS = 12  # 4,096 sequence numbers per locator partition
_SDK_ID = re.compile(r"([0-9a-f]{16})-([0-9a-f]{1,15})")
_OWN = -1


def new_client_prefix() -> str:
    """The ``{client}-`` part of the ids one AuditClient makes."""
    return os.urandom(8).hex() + "-"


def locator_partition(event_id: str) -> tuple[str, int]:
    """(id group, block) of the ``events_by_id`` partition holding this id's locator row."""
    match = _SDK_ID.fullmatch(event_id)
    if match is None:
        return event_id, _OWN
    return match.group(1), int(match.group(2), 16) >> BLOCK_BITS
