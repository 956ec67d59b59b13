"""Parsing of configuration from a mapping (``os.environ`` only in ``__main__``).

Each service defines a frozen dataclass and builds it with these readers, so a bad value
raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ConfigError", "Env", "StoreConfig"]


class ConfigError(ValueError):
    """A configuration variable has a value that cannot be used."""


class Env:
    """Typed reads of ``AUDITMESH_*`` variables from a mapping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, default)

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: not an integer") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r}: must be >= {minimum}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: not a number") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r}: must be >= {minimum}")
        return value

    def items(self, name: str, default: list[str]) -> list[str]:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return [part.strip() for part in raw.split(",") if part.strip()]


@dataclass(frozen=True)
class StoreConfig:
    """Where and how to reach Cassandra."""

    hosts: tuple[str, ...] = ("127.0.0.1",)
    """Contact points (AUDITMESH_CASSANDRA_HOSTS, comma separated)."""
    port: int = 9042
    """CQL port (AUDITMESH_CASSANDRA_PORT)."""
    keyspace: str = "auditmesh"
    """Keyspace holding every table (AUDITMESH_KEYSPACE)."""
    replication_factor: int = 1
    """Replication factor used when the keyspace is created (AUDITMESH_REPLICATION_FACTOR)."""
    consistency: str = "ONE"
    """Consistency level of reads and writes: ONE locally, LOCAL_QUORUM in production
    (AUDITMESH_CONSISTENCY)."""
    retention_days: int = 400
    """Retention TTL of stored events in days; 0 keeps them forever (AUDITMESH_RETENTION_DAYS)."""
    max_write_statements: int = 8
    """Batch statements of bulk writes in flight per process (AUDITMESH_MAX_WRITE_STATEMENTS).
    Enough to keep Cassandra busy; more only queues work a critical write would wait behind."""
    max_batch_bytes: int = 128 * 1024
    """Encoded bytes of the rows of one batch statement (AUDITMESH_MAX_BATCH_BYTES). Must stay
    well under Cassandra's ``batch_size_fail_threshold`` (and under ``batch_size_warn_threshold``
    to keep its log quiet): the local node's are 1024 and 256 KiB; a stock cassandra.yaml has
    50 and 5 KiB, so set this to 40 KiB or raise them."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreConfig:
        e = Env(env)
        consistency = e.text("AUDITMESH_CONSISTENCY", cls.consistency).upper()
        if consistency not in {"ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"}:
            raise ConfigError(f"AUDITMESH_CONSISTENCY={consistency!r}: unknown consistency level")
        return cls(
            hosts=tuple(e.items("AUDITMESH_CASSANDRA_HOSTS", list(cls.hosts))),
            port=e.integer("AUDITMESH_CASSANDRA_PORT", cls.port, minimum=1),
            keyspace=e.text("AUDITMESH_KEYSPACE", cls.keyspace),
            replication_factor=e.integer("AUDITMESH_REPLICATION_FACTOR", cls.replication_factor, minimum=1),
            consistency=consistency,
            retention_days=e.integer("AUDITMESH_RETENTION_DAYS", cls.retention_days),
            max_write_statements=e.integer("AUDITMESH_MAX_WRITE_STATEMENTS", cls.max_write_statements, minimum=1),
            max_batch_bytes=e.integer("AUDITMESH_MAX_BATCH_BYTES", cls.max_batch_bytes, minimum=16 * 1024),
        )
