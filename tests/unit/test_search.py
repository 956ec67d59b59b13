"""Search specs validate their filters, and page tokens cannot be forged or moved to another search."""

from __future__ import annotations

import pytest

from auditmesh.errors import InvalidRequest
from auditmesh.search import Cursor, SearchSpec, TokenSigner
from auditpb.v1 import audit_pb2 as pb


def spec(**fields: object) -> SearchSpec:
    return SearchSpec.from_request(pb.SearchRequest(**fields), now_ms=10**12)  # type: ignore[arg-type]


def test_needs_exactly_one_of_wedding_and_user() -> None:
    with pytest.raises(InvalidRequest, match="exactly one"):
        spec()
    with pytest.raises(InvalidRequest, match="exactly one"):
        spec(wedding_id="w", user_id="u")


def test_reversed_range_is_refused() -> None:
    req = pb.SearchRequest(wedding_id="w")
    req.start.FromMilliseconds(2000)
    req.end.FromMilliseconds(1000)
    with pytest.raises(InvalidRequest) as info:
        SearchSpec.from_request(req)
    assert info.value.field == "start"


def test_token_round_trip_and_forgery() -> None:
    signer = TokenSigner(b"k")
    s = spec(wedding_id="w1")
    token = signer.encode(s, Cursor(5, 123, "e1"))
    assert signer.decode(s, token) == (s, Cursor(5, 123, "e1"))
    with pytest.raises(InvalidRequest, match="different search"):
        signer.decode(spec(wedding_id="w2"), token)
    body, sig = token.split(".")
    with pytest.raises(InvalidRequest, match="signature"):
        signer.decode(s, body[:-2] + "AA." + sig)
    with pytest.raises(InvalidRequest, match="signature"):
        TokenSigner(b"other").decode(s, token)


@pytest.mark.parametrize(
    "other",
    [
        {"wedding_id": "w2"},
        {"user_id": "w1"},
        {"wedding_id": "w1", "event_types": ["auth.login.failed"]},
        {"wedding_id": "w1", "event_types": ["guestlist.export", "auth.login.failed"]},
        {"wedding_id": "w1", "min_severity": pb.P1_HIGH},
        {"wedding_id": "w1", "outcome": pb.OUTCOME_FAILURE},
        {"wedding_id": "w1", "organization_id": "o1"},
    ],
)
def test_a_token_is_bound_to_the_partition_key_and_every_filter(other: dict[str, object]) -> None:
    """A token made for one search is refused by a search with another key or any other filter."""
    signer = TokenSigner(b"k")
    token = signer.encode(spec(wedding_id="w1", event_types=["guestlist.export"]), Cursor(5, 123, "e1"))
    fields = {"event_types": ["guestlist.export"], **other}
    with pytest.raises(InvalidRequest, match="different search") as info:
        signer.decode(spec(**fields), token)
    assert info.value.field == "page_token"


def test_a_token_is_bound_to_an_explicit_time_range() -> None:
    """A token of a search over an explicit range is refused for a wider range, and continues
    the same range."""
    signer = TokenSigner(b"k")

    def ranged(start_ms: int, end_ms: int) -> SearchSpec:
        req = pb.SearchRequest(wedding_id="w1")
        req.start.FromMilliseconds(start_ms)
        req.end.FromMilliseconds(end_ms)
        return SearchSpec.from_request(req, now_ms=10**12)

    token = signer.encode(ranged(1000, 5000), Cursor(0, 3000, "e1"))
    both = {"explicit_start": True, "explicit_end": True}
    assert signer.decode(ranged(1000, 5000), token, **both)[1] == Cursor(0, 3000, "e1")
    for wider in (ranged(0, 5000), ranged(1000, 9000)):
        with pytest.raises(InvalidRequest, match="different time range"):
            signer.decode(wider, token, **both)
    # A bound the request leaves open continues the token's: an open end moves with the clock.
    assert signer.decode(ranged(1000, 9000), token, explicit_start=True)[0].end_ms == 5000


def test_a_token_with_a_non_ascii_signature_is_malformed_not_an_error() -> None:
    """A page token edited to carry non-ASCII text is INVALID_ARGUMENT, not an internal error."""
    signer = TokenSigner(b"k")
    spec = SearchSpec.from_request(pb.SearchRequest(wedding_id="w1"), now_ms=10**12)
    token = signer.encode(spec, Cursor(0, 3000, "e1"))
    with pytest.raises(InvalidRequest, match="bad signature"):
        signer.decode(spec, token.split(".")[0] + ".é" + token.split(".")[1][1:])
