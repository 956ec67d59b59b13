"""Where an id's locator row lives: shared partitions for the SDK's ids, one of its own otherwise."""

from __future__ import annotations

from cassandra import cqltypes
from hypothesis import given
from hypothesis import strategies as st

from auditmesh import rowcodec
from auditmesh.event_ids import BLOCK_BITS, locator_partition, new_client_prefix


def test_sdk_ids_of_one_client_share_a_partition_per_block() -> None:
    prefix = new_client_prefix()
    partitions = {locator_partition(f"{prefix}{seq:x}") for seq in range(1, 3 << BLOCK_BITS)}
    assert partitions == {(prefix[:-1], 0), (prefix[:-1], 1), (prefix[:-1], 2)}
    other = new_client_prefix()
    assert locator_partition(f"{other}1") == (other[:-1], 0) != locator_partition(f"{prefix}1")


def test_other_ids_get_a_partition_of_their_own() -> None:
    for event_id in ("evt-1", "3f2b1c9e-8d4a-4e2f-9b1a-6c5d4e3f2a1b", "0123456789abcdef-xyz", "0123456789ABCDEF-1"):
        assert locator_partition(event_id) == (event_id, -1)


@given(st.text(min_size=1, max_size=60))
def test_every_id_maps_to_one_partition(event_id: str) -> None:
    group, block = locator_partition(event_id)
    assert locator_partition(event_id) == (group, block)
    assert (group, block) == (event_id, -1) or event_id.startswith(group + "-")


@given(block=st.integers(min_value=-1, max_value=2**60))
def test_block_encoding_matches_the_driver(block: int) -> None:
    assert rowcodec.int64(block) == cqltypes.LongType.serialize(block, 4)
