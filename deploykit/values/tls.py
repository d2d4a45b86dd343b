"""What a stack's HTTPS is, as plain data: the ``--tls`` choice, and what plan.json records of its certificate.

Two ways to give a stack a certificate (``--tls``, or ``tls = …`` in the config file or deploykit.toml):

- ``internal``: deploykit keeps ONE certificate authority per site, in its config folder
  (``$XDG_CONFIG_HOME/deploykit/tls``), so every stack and every fleet host of a site is trusted once;
- ``CERT,KEY``: the site's own pair (a PEM chain, leaf first, and its unencrypted PEM key).

Values only: making and checking certificates is ``deploykit.seams.certificates``'s, rendering a stack with
them ``deploykit.app.stack``'s, and running the proxy ``deploykit.running.tls_proxy``'s.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Mode = Literal["internal", "files"]
OFF, INTERNAL = "off", "internal"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


@dataclass(frozen=True)
class TlsChoice:
    """What the settings ask for: the site CA, or the site's own certificate and key files."""

    mode: Mode
    cert: Path | None = None
    key: Path | None = None


def parse_choice(value: str) -> TlsChoice | None:
    """``off`` → None; ``internal``; or ``CERT,KEY`` (two paths, comma-separated). Raises ValueError in words."""
    text = value.strip()
    if text.lower() in (OFF, "none", "false", ""):
        return None
    if text.lower() == INTERNAL:
        return TlsChoice("internal")
    cert, comma, key = text.partition(",")
    if not comma or not cert.strip() or not key.strip() or "," in key:
        raise ValueError(f"'{value[:80]}' is not 'internal', 'off' or CERT,KEY (two file paths, comma-separated)")
    if "\0" in text or "\n" in text:
        raise ValueError("the --tls paths hold a NUL byte or a line break")
    return TlsChoice("files", Path(cert.strip()).expanduser(), Path(key.strip()).expanduser())


class TlsSpec(BaseModel):
    """What plan.json records of a stack's HTTPS: how its certificate came, for which names, until when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode
    names: tuple[str, ...]  # DNS names and IP addresses the certificate is for (its subjectAltName)
    cert_sha256: str  # of the leaf certificate served (DER): a new one changes compose.yaml, so Caddy restarts
    not_after: str  # ISO 8601, UTC
    cert_path: str | None = None  # files: the site's own pair, read again on every render
    key_path: str | None = None

    def choice(self) -> TlsChoice:
        if self.mode == "internal":
            return TlsChoice("internal")
        return TlsChoice("files", Path(self.cert_path or ""), Path(self.key_path or ""))

    @property
    def primary_name(self) -> str:
        """The name a person types: the first that is not loopback (a host name before an address)."""
        names = [n for n in self.names if not _loopback(n)]
        by_kind = sorted(names, key=lambda n: is_ip(n))  # stable: DNS names first, in their order
        return by_kind[0] if by_kind else "localhost"

    def url(self, port: int, name: str | None = None) -> str:
        host = name or self.primary_name
        return f"https://{f'[{host}]' if ':' in host else host}:{port}"

    def webui_env(self) -> dict[str, str]:
        """Open WebUI's environment behind HTTPS: its session and auth cookies go over HTTPS only."""
        return {"WEBUI_SESSION_COOKIE_SECURE": "true", "WEBUI_AUTH_COOKIE_SECURE": "true"}

    def webui_stored(self, port: int) -> dict[str, str]:
        """Settings Open WebUI keeps in its database, written through its API on every `up` (not compose's
        environment, so a new certificate's name does not restart Open WebUI): its public URL."""
        return {"WEBUI_URL": self.url(port)}


@dataclass(frozen=True)
class Material:
    """A stack's certificate as rendered: its TlsSpec, the files for the stack folder, and what to tell."""

    spec: TlsSpec
    files: dict[str, str]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- names


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _loopback(name: str) -> bool:
    return name == "localhost" or (is_ip(name) and ipaddress.ip_address(name).is_loopback)


def usable_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names a certificate can carry, in order, each once: IP addresses and DNS names (lower-case)."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().rstrip(".").lower()
        if is_ip(name):
            name = str(ipaddress.ip_address(name))
        elif not _DNS_NAME.match(name):
            continue
        if name not in out:
            out.append(name)
    return tuple(out)


def recorded(plan: Mapping[str, Any] | None) -> TlsSpec | None:
    """The HTTPS a stack's plan.json records (None: none, or none this deploykit can read)."""
    from pydantic import ValidationError

    stack = plan.get("stack") if plan else None
    data = stack.get("tls") if isinstance(stack, dict) else None
    try:
        return TlsSpec.model_validate(data) if data is not None else None
    except ValidationError:
        return None
