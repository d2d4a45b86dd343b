"""The certificates of a stack's HTTPS: the site CA in deploykit's config folder, a certificate from it for a
stack's names, and a site's own pair read and checked — the files and the cryptography, one seam.

- ``internal``: ONE certificate authority per site, in ``$XDG_CONFIG_HOME/deploykit/tls`` (``ca.pem``, and
  ``ca-key.pem`` at 0600), so every stack and every fleet host of a site is trusted once. Each stack gets a
  certificate for its host's names and addresses, kept in the stack folder and issued again only when the
  names change, the CA changes or fewer than 30 days are left.
- ``CERT,KEY``: the site's own pair, checked before anything is written — readable regular files, PEM, the key
  belongs to the certificate, valid today — and read again on every render, so a renewed pair is picked up.

A private key is never printed, logged or put in a message; key files are written 0600. The values
(``TlsChoice``, ``TlsSpec``, ``Material``) are ``deploykit.values.tls``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import ssl
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.values.errors import ConfigError, NotFoundError, StackDirError, UsageError
from deploykit.values.paths import config_dir
from deploykit.values.stackfiles import TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from deploykit.values.tls import Material, TlsChoice, TlsSpec, is_ip, parse_choice, usable_names

if TYPE_CHECKING:
    from cryptography import x509

LEAF_DAYS = 365  # below Apple's 825-day limit for certificates from a CA a user trusts
CA_DAYS = 3650
RENEW_DAYS = 30  # a certificate with less left is issued again on render/up; `doctor` warns from here
MAX_PEM_BYTES = 1 << 20  # a PEM chain is a few KiB; anything this big is not one
TLS_HINT = "Give --tls internal (a certificate from the site CA deploykit keeps) or --tls CERT,KEY (PEM files)."
_ca_lock = threading.Lock()  # fleet hosts render side by side: one CA is made, once


# ---------------------------------------------------------------- names


def local_names(bind: str) -> tuple[str, ...]:
    """This machine's names for a port published on ``bind``: loopback, its host names, its LAN addresses."""
    import socket

    from deploykit.seams.detect import host_addresses

    loop = ("localhost", "127.0.0.1")
    if bind.startswith("127."):
        return usable_names((*loop, bind))
    if bind not in ("0.0.0.0", ""):
        return usable_names((bind, *loop))
    hostname = socket.gethostname()
    fqdn = socket.getfqdn()
    addresses = [
        a.ip
        for a in host_addresses()
        # Docker's own bridges only lead to containers on this host.
        if not (a.interface == "docker0" or a.interface.startswith(("br-", "veth")))
    ]
    return usable_names((hostname, *([fqdn] if "." in fqdn else []), *addresses, *loop))


# ---------------------------------------------------------------- reading PEM files a user named


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_pem(path: Path, what: str, hint: str = TLS_HINT) -> str:
    """The text of a PEM file a user named: a readable regular file of at most 1 MiB, ASCII — or one sentence.

    Opened without blocking (a named pipe answers at once, and is refused); the content never reaches a message.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFoundError(f"the {what} {path} does not exist.", hint) from None
    except OSError as exc:
        raise UsageError(f"cannot look at the {what} {path}: {exc.strerror}.", hint) from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"the {what} {path} is {_describe(mode)}, not a PEM file.", hint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}.", hint) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped for something else since the stat
            raise UsageError(f"the {what} {path} is not a regular file.", hint)
        try:
            raw = fh.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the {what} {path}: {exc.strerror}.", hint) from None
    if len(raw) > MAX_PEM_BYTES:
        raise UsageError(f"the {what} {path} is larger than 1 MiB: not a PEM file.", hint)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(
            f"the {what} {path} is not PEM text (binary or not ASCII; DER files need converting).",
            "Convert it with `openssl x509 -inform der -in FILE -out FILE.pem` (a key: `openssl pkey -inform der`).",
        ) from None


def _certs(text: str, path: Path) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError:
        certs = []
    if not certs:
        swapped = " (it holds a private key: the order is --tls CERT,KEY)" if "PRIVATE KEY" in text else ""
        raise UsageError(f"the certificate file {path} holds no PEM certificate{swapped}.", TLS_HINT)
    return certs


def _key(text: str, path: Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except TypeError:
        raise UsageError(
            f"the key file {path} is encrypted; Caddy needs the key without a passphrase.",
            "Write an unencrypted copy (`openssl pkey -in KEY -out KEY.plain`, mode 0600) and give that.",
        ) from None
    except UnsupportedAlgorithm:
        unusable = f"the key file {path} holds a key type deploykit cannot use."
        raise UsageError(unusable, "Give an RSA or EC key.") from None
    except ValueError:
        swapped = " (it holds a certificate: the order is --tls CERT,KEY)" if "CERTIFICATE" in text else ""
        raise UsageError(f"the key file {path} holds no PEM private key{swapped}.", TLS_HINT) from None


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _key_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data.decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses of a certificate's subjectAltName (none: empty)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check_pair(cert_path: Path, key_path: Path, now: datetime | None = None) -> Material:
    """The site's own pair, checked: PEM, the key belongs to the first certificate, valid now. Nothing written."""
    now = now or datetime.now(UTC)
    cert_text = read_pem(cert_path, "certificate file")
    key_text = read_pem(key_path, "key file")
    chain = _certs(cert_text, cert_path)
    key = _key(key_text, key_path)
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise UsageError(
            f"the key in {key_path} does not belong to the certificate in {cert_path}.",
            "Give the key the certificate was issued for (its first certificate must be the server's own).",
        )
    if leaf.not_valid_after_utc <= now:
        raise UsageError(
            f"the certificate in {cert_path} expired on {_when(leaf.not_valid_after_utc)}.",
            "Renew it, or use --tls internal for a certificate from the site CA.",
        )
    if leaf.not_valid_before_utc > now:
        raise UsageError(
            f"the certificate in {cert_path} is not valid before {_when(leaf.not_valid_before_utc)}.",
            "Check this machine's clock, or give a certificate that is valid today.",
        )
    names = usable_names(cert_names(leaf))  # wildcards name no host to print or to answer IP clients with
    notes = []
    if not cert_names(leaf):
        notes.append(f"the certificate in {cert_path} names no subjectAltName; browsers refuse such certificates.")
    left = (leaf.not_valid_after_utc - now).days
    if left < RENEW_DAYS:
        notes.append(f"the certificate in {cert_path} expires in {left} days ({_when(leaf.not_valid_after_utc)}).")
    spec = TlsSpec(
        mode="files",
        names=names,
        cert_sha256=fingerprint(leaf),
        not_after=leaf.not_valid_after_utc.isoformat(),
        cert_path=str(cert_path.absolute()),
        key_path=str(key_path.absolute()),
    )
    chain_pem = "".join(_cert_pem(c) for c in chain)
    return Material(spec, {TLS_CERT_FILE: chain_pem, TLS_KEY_FILE: _key_pem(key)}, notes)


# ---------------------------------------------------------------- the site CA


@dataclass(frozen=True)
class SiteCA:
    cert: x509.Certificate
    key: Any
    folder: Path

    @property
    def pem(self) -> str:
        return _cert_pem(self.cert)

    @property
    def cert_file(self) -> Path:
        return self.folder / "ca.pem"


def ca_folder() -> Path:
    return config_dir() / "tls"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """This process's threads and other deploykit processes wait for each other while the CA is made."""
    import fcntl

    with _ca_lock:
        fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _write_private(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _ca_problem(folder: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"the site CA in {folder} {problem}.",
        f"Move {folder} away to have deploykit make a new CA (every machine that trusted the old one must then "
        "trust the new one), or put the CA's ca.pem and ca-key.pem back.",
    )


def site_ca(now: datetime | None = None) -> SiteCA:
    """The site's CA from deploykit's config folder, made (once, whoever asks first) when there is none."""
    now = now or datetime.now(UTC)
    folder = ca_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(folder):
            if not (folder / "ca.pem").exists() and not (folder / "ca-key.pem").exists():
                cert, key = _new_ca(now)
                _write_private(folder / "ca-key.pem", _key_pem(key), 0o600)
                _write_private(folder / "ca.pem", _cert_pem(cert), 0o644)
    except OSError as exc:
        raise _ca_problem(folder, f"cannot be written ({exc.strerror})") from None
    return load_ca(folder, now)


def load_ca(folder: Path, now: datetime) -> SiteCA:
    try:
        cert_text = read_pem(folder / "ca.pem", "site CA certificate")
        key_text = read_pem(folder / "ca-key.pem", "site CA key")
        cert = _certs(cert_text, folder / "ca.pem")[0]
        key = _key(key_text, folder / "ca-key.pem")
    except (UsageError, NotFoundError) as exc:
        raise _ca_problem(folder, f"cannot be used: {exc.message.rstrip('.')}") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise _ca_problem(folder, "has a key that does not belong to its certificate")
    if cert.not_valid_after_utc <= now + timedelta(days=1):
        raise ConfigError(
            f"the site CA in {folder} expires on {_when(cert.not_valid_after_utc)}.",
            f"Move {folder} away to have a new CA made, then trust the new ca.pem on every machine.",
        )
    return SiteCA(cert, key, folder)


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    organisation = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "deploykit")
    return x509.Name([organisation, x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a server (EC key) only signs its handshakes."""
    from cryptography import x509

    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only"), False
    )
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, decipher_only=False, **flags)


def _new_ca(now: datetime) -> tuple[x509.Certificate, Any]:
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"deploykit site CA ({socket.gethostname()[:40]}, {now:%Y-%m-%d})")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca: SiteCA, names: tuple[str, ...], now: datetime | None = None) -> tuple[x509.Certificate, Any]:
    """A server certificate (and its new EC key) from the site CA for ``names``: DNS names and IP addresses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not names:
        raise ValueError("a certificate needs at least one name")
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if is_ip(n) else x509.DNSName(n) for n in names
    ]
    ca_public = ca.cert.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(min(now + timedelta(days=LEAF_DAYS), ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)  # type: ignore[arg-type]
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def _kept(stack_dir: Path, ca: SiteCA, names: tuple[str, ...], now: datetime) -> tuple[x509.Certificate, Any] | None:
    """The stack's certificate when it can stay: the CA issued it, it covers ``names``, 30 days or more left."""
    try:
        cert = _certs(read_pem(stack_dir / TLS_CERT_FILE, "certificate"), stack_dir / TLS_CERT_FILE)[0]
        key = _key(read_pem(stack_dir / TLS_KEY_FILE, "key"), stack_dir / TLS_KEY_FILE)
        cert.verify_directly_issued_by(ca.cert)
    except Exception:  # missing, damaged or from another CA: a new one is issued, nothing is lost
        return None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return None
    if not set(names) <= set(cert_names(cert)) or cert.not_valid_after_utc - now < timedelta(days=RENEW_DAYS):
        return None
    return cert, key


def internal(stack_dir: Path, names: Iterable[str], now: datetime | None = None) -> Material:
    """A certificate from the site CA for ``names``: the stack's own when it can stay, else a new one."""
    now = now or datetime.now(UTC)
    wanted = usable_names(names) or ("localhost", "127.0.0.1")
    ca = site_ca(now)
    kept = _kept(stack_dir, ca, wanted, now)
    notes = []
    if kept is None:
        cert, key = issue(ca, wanted, now)
        notes.append(f"issued a certificate from the site CA ({ca.cert_file}) for {', '.join(wanted)}.")
    else:
        cert, key = kept
    spec = TlsSpec(
        mode="internal",
        names=cert_names(cert),
        cert_sha256=fingerprint(cert),
        not_after=cert.not_valid_after_utc.isoformat(),
    )
    files = {TLS_CERT_FILE: _cert_pem(cert), TLS_KEY_FILE: _key_pem(key), TLS_CA_FILE: ca.pem}
    return Material(spec, files, notes)


def material(choice: TlsChoice, stack_dir: Path, names: Iterable[str]) -> Material:
    """The stack's certificate for what the settings chose; every check is made before anything is written."""
    if choice.mode == "internal":
        return internal(stack_dir, names)
    assert choice.cert is not None and choice.key is not None
    return check_pair(choice.cert, choice.key)


def precheck(setting: str | None) -> None:
    """What ``setting`` names, checked once before a fleet's hosts are rendered side by side: the site's pair
    (so a bad file is one error, not one per host), or the site CA (made now, once)."""
    choice = parse_choice(setting) if setting is not None else None
    if choice is not None and choice.mode == "internal":
        site_ca()
    elif choice is not None:
        assert choice.cert is not None and choice.key is not None
        check_pair(choice.cert, choice.key)


def expiry(path: Path) -> datetime:
    """When the first certificate in ``path`` (a stack's tls-cert.pem, a CA file) expires; UsageError if unreadable."""
    return _certs(read_pem(path, "certificate"), path)[0].not_valid_after_utc


# ---------------------------------------------------------------- deploykit as the proxy's client


def client_context(spec: TlsSpec, stack_dir: Path) -> ssl.SSLContext:
    """How deploykit checks a stack's proxy: against the site CA with the address it uses (internal); pinned to
    the site's own certificate, whatever names it carries (files: 127.0.0.1 is rarely among them)."""
    name = TLS_CA_FILE if spec.mode == "internal" else TLS_CERT_FILE
    path = stack_dir / name
    try:
        pem = path.read_text(encoding="ascii")
        if spec.mode == "internal":
            return ssl.create_default_context(cadata=pem)
        leaf = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
        context = ssl.create_default_context(cadata=leaf)
    except (OSError, ValueError, ssl.SSLError):
        raise StackDirError(
            f"{path} is missing or not a PEM certificate, so deploykit cannot check the stack's HTTPS.",
            f"`deploykit render --dir {stack_dir}` writes it again.",
        ) from None
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
