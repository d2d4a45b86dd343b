"""Certificates the tests make themselves (a site's own CA and pair, as `--tls CERT,KEY` gets them), written
with the `cryptography` package directly, not through deploykit.seams.certificates, so the code under test
does not check its own output."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    ca: Path | None
    certificate: x509.Certificate
    key_pem: str  # the key as written: the tests check that no line of it is ever printed


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    data: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return data


def make_ca(folder: Path, cn: str = "Test Site CA") -> tuple[x509.Certificate, Any, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_pair(
    folder: Path,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    *,
    days: tuple[int, int] = (-1, 90),  # valid from, until: days from now
    rsa_key: bool = False,
    password: bytes | None = None,
    ca: tuple[x509.Certificate, Any, Path] | None = None,
) -> Pair:
    """A server certificate for ``names`` signed by ``ca`` (a new test CA when None), its key, and the chain."""
    ca = ca or make_ca(folder)
    ca_cert, ca_key, ca_path = ca
    key: Any = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0] if names else "no-san"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(chain)
    key_pem = _pem_key(key, password)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return Pair(cert_path, key_path, ca_path, cert, key_pem.decode("ascii"))


def secret_lines(pair: Pair) -> list[str]:
    """The base64 lines of the key: none may appear in any output."""
    return [line for line in pair.key_pem.splitlines() if line and not line.startswith("-----")]
