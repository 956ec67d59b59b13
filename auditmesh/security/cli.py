"""``auditmesh certs``, ``auditmesh token`` and ``auditmesh verify``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from auditmesh.security.certs import create_material, new_signing_key
from auditmesh.security.client import DEFAULT_DIR
from auditmesh.security.tokens import SCOPES, issue_token

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
