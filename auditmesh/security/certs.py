"""A local certificate authority and the mesh's certificates (``auditmesh certs``), and the
gRPC credentials built from them.

Layout of a security directory::

    ca.pem ca.key                 the CA (keep ca.key off production hosts)
    <name>.pem <name>.key         one certificate per service and for operators (``operator``),
                                  valid for TLS server and client authentication
    tokens/<kid>.key <kid>.pub    Ed25519 token signing keys, named by key id
    checkpoint.key                Ed25519 key that signs the processors' digest checkpoints

Certificates use ECDSA P-256 (what every TLS stack accepts); signing keys use Ed25519.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "NAMES",
    "channel_credentials",
    "create_ca",
    "create_material",
    "issue_certificate",
    "new_signing_key",
    "server_credentials",
]

NAMES = ("ingest", "processor", "query", "monitor", "scaler", "operator")
"""The certificates ``auditmesh certs`` makes: one per service, and one for operators' tools."""
_VALID_DAYS = 365


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(directory: Path, common_name: str = "auditmesh local CA") -> None:
    """A self-signed CA in ``directory`` (ca.pem, ca.key); kept when it exists."""
    if (directory / "ca.pem").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10 * _VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.key", _key_pem(key), private=True)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))


def issue_certificate(directory: Path, name: str, hosts: Iterable[str]) -> None:
    """``<name>.pem`` and ``<name>.key`` signed by the directory's CA, for ``hosts`` (IPs or DNS
    names), usable as both TLS server and TLS client certificate."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("ca.key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / f"{name}.key", _key_pem(key), private=True)
    _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))


def new_signing_key(directory: Path, kid: str | None = None) -> str:
    """A new Ed25519 token signing key in ``directory/tokens`` named by its key id; returns the id.
    Older keys stay, so tokens they signed verify until their keys are removed (rotation)."""
    kid = kid or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d") + "-" + secrets.token_hex(3)
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    _write(tokens / f"{kid}.key", _key_pem(key), private=True)
    _write(
        tokens / f"{kid}.pub",
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return kid


def create_material(directory: Path, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> list[Path]:
    """Everything a secure mesh needs in ``directory``: the CA (kept if present), a certificate
    per name in :data:`NAMES`, a token signing key (when there is none) and the checkpoint key
    (kept if present). Returns the files written or kept."""
    directory.mkdir(parents=True, exist_ok=True)
    create_ca(directory)
    hosts = list(hosts)
    for name in NAMES:
        issue_certificate(directory, name, hosts)
    if not list((directory / "tokens").glob("*.key")):
        new_signing_key(directory)
    if not (directory / "checkpoint.key").exists():
        _write(directory / "checkpoint.key", _key_pem(ed25519.Ed25519PrivateKey.generate()), private=True)
    return sorted(p for p in directory.rglob("*") if p.is_file())


def server_credentials(directory: Path, name: str, *, require_client_cert: bool) -> grpc.ServerCredentials:
    """TLS with ``name``'s certificate; with ``require_client_cert``, only clients presenting a
    certificate from the directory's CA get a connection (mTLS)."""
    return grpc.ssl_server_credentials(
        [((directory / f"{name}.key").read_bytes(), (directory / f"{name}.pem").read_bytes())],
        root_certificates=(directory / "ca.pem").read_bytes(),
        require_client_auth=require_client_cert,
    )


def channel_credentials(directory: Path, name: str | None = None) -> grpc.ChannelCredentials:
    """TLS that trusts only the directory's CA; with ``name``, also presents that certificate."""
    if name is None:
        return grpc.ssl_channel_credentials(root_certificates=(directory / "ca.pem").read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca.pem").read_bytes(),
        private_key=(directory / f"{name}.key").read_bytes(),
        certificate_chain=(directory / f"{name}.pem").read_bytes(),
    )
