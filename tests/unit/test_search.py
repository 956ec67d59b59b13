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
