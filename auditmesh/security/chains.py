"""Wiring of a processor's digest chains from its configuration."""

from __future__ import annotations

from cassandra.cluster import Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditmesh.config import StoreConfig
from auditmesh.security.config import SecurityConfig
from auditmesh.security.digests import DigestChain

__all__ = ["checkpoint_key", "digest_chains"]


def checkpoint_key(cfg: SecurityConfig) -> ed25519.Ed25519PrivateKey:
    """The security directory's checkpoint key; in insecure mode a key of this process only,
    whose public half is recorded with each chain (it shows accidents and naive edits, not an
    attacker who can also rewrite the chains table: see docs/security.md)."""
    if cfg.enabled and (cfg.path / "checkpoint.key").exists():
        key = serialization.load_pem_private_key((cfg.path / "checkpoint.key").read_bytes(), None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{cfg.path / 'checkpoint.key'} is not an Ed25519 key")
        return key
    return ed25519.Ed25519PrivateKey.generate()


async def digest_chains(
    cfg: SecurityConfig, session: Session, urgent: Session, store: StoreConfig
) -> list[DigestChain]:
    """The bulk and critical chains of a processor, started; none when digests are off. The
    critical chain writes on ``urgent`` (the critical lane's own connections), so its digests
    never queue behind bulk batches."""
    if not cfg.digests:
        return []
    key = checkpoint_key(cfg)
    chains = [
        DigestChain(
            chain_session,
            store.keyspace,
            key,
            lane=lane,
            every=cfg.checkpoint_every,
            interval_s=cfg.checkpoint_interval_s,
            consistency=store.consistency,
        )
        for lane, chain_session in (("bulk", session), ("critical", urgent))
    ]
    for chain in chains:
        await chain.start()
    return chains
