"""Configuration of the query service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditmesh.config import Env, StoreConfig
from auditmesh.security.config import SecurityConfig
from auditmesh.validation import Limits

__all__ = ["QueryConfig"]


@dataclass(frozen=True)
class QueryConfig:
    host: str = "127.0.0.1"
    """Interface to listen on (AUDITMESH_QUERY_HOST)."""
    port: int = 50071
    """Port to listen on; 0 picks a free one (AUDITMESH_QUERY_PORT)."""
    metrics_port: int = 0
    """Port of the Prometheus metrics endpoint (GET /metrics); 0 turns it off (AUDITMESH_QUERY_METRICS_PORT)."""
    token_key: str = ""
    """Secret that signs page tokens; every query replica needs the same one. Empty means a
    random key per process: tokens then work only against the process that made them
    (AUDITMESH_TOKEN_KEY)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for the read cache; empty disables the cache (AUDITMESH_REDIS_URL)."""
    cache_ttl_s: int = 300
    """How long a cached page lives (AUDITMESH_CACHE_TTL_S)."""
    max_page_bytes: int = 3 * 1024 * 1024
    """Serialized bytes of one page's events (AUDITMESH_QUERY_MAX_PAGE_BYTES): a page that would
    pass it ends early with a next-page token. Under gRPC's default 4 MiB receive limit."""
    max_scan_rows: int = 5000
    """Rows one page may read (AUDITMESH_QUERY_MAX_SCAN_ROWS): a filter that matches little
    gets a short (or empty) page with a next-page token instead of scanning the whole range."""
    limits: Limits = field(default_factory=Limits)
    """Id and text lengths, as ingest enforces them (AUDITMESH_MAX_ID_LEN, AUDITMESH_MAX_TEXT_LEN)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """TLS, tokens, rate limits, redaction, digests (AUDITMESH_SECURITY_DIR and others)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueryConfig:
        e = Env(env)
        return cls(
            host=e.text("AUDITMESH_QUERY_HOST", cls.host),
            port=e.integer("AUDITMESH_QUERY_PORT", cls.port),
            metrics_port=e.integer("AUDITMESH_QUERY_METRICS_PORT", cls.metrics_port),
            token_key=e.text("AUDITMESH_TOKEN_KEY", cls.token_key),
            redis_url=e.text("AUDITMESH_REDIS_URL", cls.redis_url),
            cache_ttl_s=e.integer("AUDITMESH_CACHE_TTL_S", cls.cache_ttl_s, minimum=1),
            max_page_bytes=e.integer("AUDITMESH_QUERY_MAX_PAGE_BYTES", cls.max_page_bytes, minimum=64 * 1024),
            max_scan_rows=e.integer("AUDITMESH_QUERY_MAX_SCAN_ROWS", cls.max_scan_rows, minimum=100),
            limits=Limits.from_env(env),
            store=StoreConfig.from_env(env),
            security=SecurityConfig.from_env(env),
        )
