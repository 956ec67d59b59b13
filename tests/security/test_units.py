"""Pure units of the security package: token verification and key rotation, token buckets,
redaction, the Merkle tree."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from auditmesh.security.certs import create_material, new_signing_key
from auditmesh.security.digests import merkle_root
from auditmesh.security.ratelimit import RateLimiter
from auditmesh.security.redaction import MASK, Redactor
from auditmesh.security.tokens import InvalidToken, TokenVerifier, issue_token
from auditpb.v1 import audit_pb2 as pb


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("unit-security")
    create_material(directory)
    return directory


def test_rotation_keeps_old_tokens_valid_until_their_key_is_removed(keys: Path, tmp_path: Path) -> None:
    """After a new key is added, tokens of the old and the new key verify; once the old public
    key is removed, the old key's tokens are refused."""
    directory = tmp_path / "sec"
    shutil.copytree(keys, directory)
    (old,) = (directory / "tokens").glob("*.key")
    old_token = issue_token(directory, "svc", ["ingest:write"])
    time.sleep(0.01)  # the newest key is the last written
    new_kid = new_signing_key(directory, "next")
    new_token = issue_token(directory, "svc", ["ingest:write"])
    assert new_kid == "next"
    verifier = TokenVerifier.from_directory(directory)
    assert verifier.verify(old_token).subject == verifier.verify(new_token).subject == "svc"
    old.with_suffix(".pub").unlink()
    verifier = TokenVerifier.from_directory(directory)
    assert verifier.verify(new_token).scopes == frozenset({"ingest:write"})
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(old_token)


def test_restrictions_travel_in_the_token(keys: Path) -> None:
    """Sources, weddings and organizations of a token come back from verification as given."""
    token = issue_token(keys, "v", ["query:read"], weddings=["w1", "w2"], orgs=["o1"], sources=["s"])
    principal = TokenVerifier.from_directory(keys).verify(token)
    assert (principal.weddings, principal.orgs, principal.sources) == ({"w1", "w2"}, {"o1"}, {"s"})
    assert principal.may_see("w1", "") and principal.may_see("w9", "o1") and not principal.may_see("w9", "o9")


def test_a_bucket_refills_at_its_rate_and_subjects_are_apart() -> None:
    """A subject's bucket empties at its burst, says when it will have room, refills at its
    rate; another subject's bucket is untouched."""
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=20, clock=lambda: now[0])
    assert limiter.take("a", 20) == 0
    assert limiter.take("a", 5) == 500
    assert limiter.take("b", 20) == 0
    now[0] = 0.5
    assert limiter.take("a", 5) == 0
    assert limiter.take("a", 1) == 100


def test_redaction_masks_keys_patterns_and_luhn_valid_cards_only() -> None:
    """Keys are masked whole, pattern and card matches in place; numbers failing Luhn stay."""
    redactor = Redactor(["password"], r"(?i:bearer\s+\S+)")
    ev = pb.Event(
        attributes={
            "PASSWORD": "x",
            "auth": "Bearer abc",
            "card": "5555-5555-5555-4444",
            "id": "1234567890123",
            "ok": "fine",
        }
    )
    assert redactor.redact(ev) == ["PASSWORD", "auth", "card"]
    assert dict(ev.attributes) == {
        "PASSWORD": MASK,
        "auth": MASK,
        "card": MASK,
        "id": "1234567890123",
        "ok": "fine",
        "auditmesh.redacted": "PASSWORD,auth,card",
    }


def test_merkle_root_is_rfc_6962() -> None:
    """Three leaves hash as RFC 6962 says: the left subtree holds the largest power of two."""
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    assert merkle_root([a]) == a
    assert merkle_root([a, b, c]) == node(node(a, b), c)


def _rfc_6962(leaves: list[bytes]) -> bytes:
    """The RFC's definition, word for word: split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _rfc_6962(leaves[:k]) + _rfc_6962(leaves[k:])).digest()


def test_merkle_root_is_rfc_6962_for_every_size() -> None:
    """Every tree size up to 1,100 (past the 500-event group and several powers of two)."""
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1100)]
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    for n in range(1, 1101):
        assert merkle_root(leaves[:n]) == _rfc_6962(leaves[:n]), n
