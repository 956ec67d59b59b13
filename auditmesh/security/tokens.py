"""Signed caller tokens: JWTs signed with Ed25519 (EdDSA), the signing key named by ``kid``.

Claims: ``sub`` (the caller, which rate limits count by), ``scope`` (space separated:
``ingest:write``, ``query:read``, ``alerts:read``, ``admin``), ``exp`` and ``iat``, and the
restrictions: ``src`` (source services an ``ingest:write`` token may write as), ``weddings`` and
``orgs`` (what a ``query:read`` or ``alerts:read`` token may see; neither means all).
Verification accepts any key of the directory's ``tokens/*.pub``: a new key is added and used
for new tokens, the old one removed once its tokens have expired.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["SCOPES", "InvalidToken", "Principal", "TokenVerifier", "issue_token"]

SCOPES = ("ingest:write", "query:read", "alerts:read", "admin")
_ALGORITHM = "EdDSA"
_ISSUER = "auditmesh"


class InvalidToken(Exception):
    """A token that is missing, malformed, expired, or not signed by a known key."""


@dataclass(frozen=True)
class Principal:
    """Who is calling and what the token lets them do."""

    subject: str
    scopes: frozenset[str]
    sources: frozenset[str] = field(default_factory=frozenset)
    weddings: frozenset[str] = field(default_factory=frozenset)
    orgs: frozenset[str] = field(default_factory=frozenset)

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def reads_everything(self) -> bool:
        return "admin" in self.scopes or not (self.weddings or self.orgs)

    def may_write_as(self, source_service: str) -> bool:
        return "admin" in self.scopes or not self.sources or source_service in self.sources

    def may_see(self, wedding_id: str, organization_id: str) -> bool:
        """Whether an event of this wedding and organization is within the token's reach."""
        if self.reads_everything:
            return True
        return (bool(wedding_id) and wedding_id in self.weddings) or (
            bool(organization_id) and organization_id in self.orgs
        )


def issue_token(
    directory: Path,
    subject: str,
    scopes: Iterable[str],
    *,
    ttl_s: float = 3600.0,
    sources: Iterable[str] = (),
    weddings: Iterable[str] = (),
    orgs: Iterable[str] = (),
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A token signed with the directory's newest signing key (or ``kid``'s)."""
    scopes = list(scopes)
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    keys = sorted((directory / "tokens").glob("*.key"), key=lambda p: p.stat().st_mtime)
    if kid is not None:
        keys = [p for p in keys if p.stem == kid]
    if not keys:
        raise FileNotFoundError(f"no token signing key in {directory / 'tokens'} (run `auditmesh certs`)")
    path = keys[-1]
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": _ISSUER,
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    for name, values in (("src", sources), ("weddings", weddings), ("orgs", orgs)):
        values = sorted(set(values))
        if values:
            claims[name] = values
    return jwt.encode(claims, key, algorithm=_ALGORITHM, headers={"kid": path.stem})  # type: ignore[arg-type]


class TokenVerifier:
    """Checks tokens against a set of public keys by key id."""

    def __init__(self, keys: Mapping[str, ed25519.Ed25519PublicKey], leeway_s: float = 30.0) -> None:
        self._keys = dict(keys)
        self._leeway_s = leeway_s

    @classmethod
    def from_directory(cls, directory: Path) -> TokenVerifier:
        keys: dict[str, ed25519.Ed25519PublicKey] = {}
        for path in sorted((directory / "tokens").glob("*.pub")):
            key = serialization.load_pem_public_key(path.read_bytes())
            if isinstance(key, ed25519.Ed25519PublicKey):
                keys[path.stem] = key
        if not keys:
            raise FileNotFoundError(f"no token verification key in {directory / 'tokens'}")
        return cls(keys)

    def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken(f"token signed by an unknown key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token refused: {exc}") from None

        def strings(name: str) -> frozenset[str]:
            value = claims.get(name, [])
            return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()

        scope = claims.get("scope", "")
        return Principal(
            subject=str(claims["sub"]),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            sources=strings("src"),
            weddings=strings("weddings"),
            orgs=strings("orgs"),
        )
