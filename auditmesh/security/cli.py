"""``auditmesh certs``, ``auditmesh token`` and ``auditmesh verify``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from cassandra.cluster import Cluster
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auditmesh.config import StoreConfig
from auditmesh.security.certs import create_material, new_signing_key
from auditmesh.security.client import DEFAULT_DIR, security_dir
from auditmesh.security.tokens import SCOPES, issue_token
from auditmesh.security.verify import verify

__all__ = ["add_parsers"]


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("AUDITMESH_SECURITY_DIR") or DEFAULT_DIR)


def cmd_certs(args: argparse.Namespace) -> int:
    directory = _dir(args)
    files = create_material(directory, args.host or ["127.0.0.1", "localhost"])
    print(f"{len(files)} files in {directory}:")
    for path in files:
        print(f"  {path.relative_to(directory)}")
    print(f"secure mode: export AUDITMESH_SECURITY_DIR={directory}")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    try:
        token = issue_token(
            _dir(args),
            args.subject,
            args.scope,
            ttl_s=args.ttl,
            sources=args.source or (),
            weddings=args.wedding or (),
            orgs=args.org or (),
            kid=args.kid,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"token issue: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_token_rotate(args: argparse.Namespace) -> int:
    kid = new_signing_key(_dir(args))
    print(f"new signing key {kid}: new tokens use it; remove tokens/<old>.key and .pub once old tokens expired")
    return 0


def _time_ms(text: str) -> int:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _public_key(directory: Path | None) -> ed25519.Ed25519PublicKey | None:
    if directory is None or not (directory / "checkpoint.key").exists():
        return None
    key = serialization.load_pem_private_key((directory / "checkpoint.key").read_bytes(), None)
    return key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else None


def cmd_verify(args: argparse.Namespace) -> int:
    cfg = StoreConfig.from_env(os.environ)
    now_ms = int(time.time() * 1000)
    end_ms = _time_ms(args.to) if args.to else now_ms + 60_000
    start_ms = _time_ms(args.since) if args.since else end_ms - 86_400_000
    directory = Path(args.dir) if args.dir else security_dir()
    key = _public_key(directory)
    cluster = Cluster(list(cfg.hosts), port=cfg.port, protocol_version=4)
    try:
        session = cluster.connect()
        report = verify(session, cfg.keyspace, start_ms=start_ms, end_ms=end_ms, wedding=args.wedding, public_key=key)
    finally:
        cluster.shutdown()
    what = f"wedding {args.wedding}" if args.wedding else "all events"
    trust = "the checkpoint key of " + str(directory) if key else "the keys the chains recorded (insecure mode)"
    print(
        f"verified {what}: {report.events} events, {report.digests} digests of {report.chains} chains,"
        f" {report.checkpoints} checkpoints, signatures checked with {trust}"
    )
    if report.foreign_chains:
        print(f"  {report.foreign_chains} chains signed by other keys were not taken into account")
    for chain, count in sorted(report.unsigned_tail.items()):
        print(f"  chain {chain}: {count} digests after its newest checkpoint (not yet sealed)")
    first = report.first()
    if first is None:
        print("intact")
        return 0
    print(f"BROKEN: first broken link: {first}")
    for problem in sorted(report.problems, key=lambda p: p.order)[1:20]:
        print(f"  also: {problem}")
    return 1


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dir_help = f"security directory (default $AUDITMESH_SECURITY_DIR or {DEFAULT_DIR})"
    certs = sub.add_parser("certs", help="create a local CA, service and operator certificates and signing keys")
    certs.add_argument("--dir", help=dir_help)
    certs.add_argument("--host", action="append", help="host name or IP the certificates are valid for (repeatable)")
    certs.set_defaults(fn=cmd_certs)
    token = sub.add_parser("token", help="issue scoped caller tokens, rotate the signing key")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    issue = token_sub.add_parser("issue", help="print a signed token")
    issue.add_argument("--dir", help=dir_help)
    issue.add_argument("--subject", required=True, help="who the caller is (rate limits count by it)")
    issue.add_argument("--scope", action="append", required=True, choices=SCOPES, help="repeatable")
    issue.add_argument("--source", action="append", help="ingest:write only as this source_service (repeatable)")
    issue.add_argument("--wedding", action="append", help="read only this wedding (repeatable)")
    issue.add_argument("--org", action="append", help="read only this organization (repeatable)")
    issue.add_argument("--ttl", type=float, default=3600.0, help="seconds the token is valid")
    issue.add_argument("--kid", help="sign with this key id (default: the newest key)")
    issue.set_defaults(fn=cmd_token_issue)
    rotate = token_sub.add_parser("rotate", help="add a new signing key; new tokens use it")
    rotate.add_argument("--dir", help=dir_help)
    rotate.set_defaults(fn=cmd_token_rotate)
    check = sub.add_parser("verify", help="prove stored events intact against the digest chains; exit 1 if not")
    which = check.add_mutually_exclusive_group(required=True)
    which.add_argument("--wedding", help="the events of one wedding")
    which.add_argument("--all", action="store_true", help="every event of the range")
    check.add_argument("--from", dest="since", help="start (epoch seconds or ISO 8601; default: a day before --to)")
    check.add_argument("--to", help="end, exclusive (default: now)")
    check.add_argument(
        "--dir", help="security directory whose checkpoint key to trust (default AUDITMESH_SECURITY_DIR)"
    )
    check.set_defaults(fn=cmd_verify)
