"""Configuration of the security controls, shared by every service."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from auditmesh.config import ConfigError, Env

__all__ = ["DEFAULT_REDACT_KEYS", "DEFAULT_REDACT_PATTERN", "SecurityConfig"]

DEFAULT_REDACT_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "authorization",
    "card_number",
    "cvv",
    "ssn",
    "national_id",
)
DEFAULT_REDACT_PATTERN = (
    r"(?i:bearer\s+[A-Za-z0-9._~+/=-]+)"  # bearer tokens
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\b\d{3}-\d{2}-\d{4}\b"  # US social security numbers
)
"""Value patterns masked wherever they occur; card numbers are found separately (Luhn-checked)."""


@dataclass(frozen=True)
class SecurityConfig:
    dir: str = ""
    """Directory made by ``auditmesh certs`` (CA, service certificates, token keys). Set, every
    service port is TLS, the processor requires a client certificate from the CA, and ingest
    and query require a token; empty is the documented insecure mode (AUDITMESH_SECURITY_DIR)."""
    events_per_s: float = 20_000.0
    """Events one token subject may send per second, per ingest process (AUDITMESH_RATE_EVENTS_PER_S)."""
    events_burst: float = 40_000.0
    """Events it may send at once after a quiet spell (AUDITMESH_RATE_EVENTS_BURST)."""
    critical_events_per_s: float = 100_000.0
    """The allowance of P0 events, apart and larger, so they are never limited away by the
    subject's other traffic (AUDITMESH_RATE_CRITICAL_EVENTS_PER_S)."""
    critical_events_burst: float = 200_000.0
    """(AUDITMESH_RATE_CRITICAL_EVENTS_BURST)"""
    calls_per_s: float = 200.0
    """Query calls one token subject may make per second, per query process (AUDITMESH_RATE_CALLS_PER_S)."""
    calls_burst: float = 400.0
    """(AUDITMESH_RATE_CALLS_BURST)"""
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    """Attribute keys whose values ingest masks, compared case-insensitively; "-" masks none
    (AUDITMESH_REDACT_KEYS, comma separated)."""
    redact_pattern: str = DEFAULT_REDACT_PATTERN
    """A regular expression whose matches in any attribute value ingest masks; "-" masks none
    (AUDITMESH_REDACT_PATTERN)."""
    redact_cards: bool = True
    """Mask card numbers (13-19 digits passing the Luhn check) in attribute values (AUDITMESH_REDACT_CARDS)."""
    checkpoint_every: int = 100
    """A signed checkpoint after this many digests of a processor's chain (AUDITMESH_CHECKPOINT_EVERY)."""
    checkpoint_interval_s: float = 10.0
    """... and at least this often, also when nothing was written (AUDITMESH_CHECKPOINT_INTERVAL_S)."""
    digests: bool = True
    """Processors chain a digest of every committed group (AUDITMESH_DIGESTS; 0 turns it off)."""

    @property
    def enabled(self) -> bool:
        return bool(self.dir)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SecurityConfig:
        e = Env(env)
        keys = e.items("AUDITMESH_REDACT_KEYS", list(cls.redact_keys))
        pattern = e.text("AUDITMESH_REDACT_PATTERN", cls.redact_pattern)
        if pattern not in ("", "-"):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"AUDITMESH_REDACT_PATTERN: {exc}") from None
        return cls(
            dir=e.text("AUDITMESH_SECURITY_DIR", cls.dir),
            events_per_s=e.number("AUDITMESH_RATE_EVENTS_PER_S", cls.events_per_s, minimum=0.001),
            events_burst=e.number("AUDITMESH_RATE_EVENTS_BURST", cls.events_burst, minimum=1),
            critical_events_per_s=e.number(
                "AUDITMESH_RATE_CRITICAL_EVENTS_PER_S", cls.critical_events_per_s, minimum=0.001
            ),
            critical_events_burst=e.number(
                "AUDITMESH_RATE_CRITICAL_EVENTS_BURST", cls.critical_events_burst, minimum=1
            ),
            calls_per_s=e.number("AUDITMESH_RATE_CALLS_PER_S", cls.calls_per_s, minimum=0.001),
            calls_burst=e.number("AUDITMESH_RATE_CALLS_BURST", cls.calls_burst, minimum=1),
            redact_keys=() if keys == ["-"] else tuple(k.lower() for k in keys),
            redact_pattern="" if pattern == "-" else pattern,
            redact_cards=e.text("AUDITMESH_REDACT_CARDS", "1") != "0",
            checkpoint_every=e.integer("AUDITMESH_CHECKPOINT_EVERY", cls.checkpoint_every, minimum=1),
            checkpoint_interval_s=e.number("AUDITMESH_CHECKPOINT_INTERVAL_S", cls.checkpoint_interval_s, minimum=0.05),
            digests=e.text("AUDITMESH_DIGESTS", "1") != "0",
        )
