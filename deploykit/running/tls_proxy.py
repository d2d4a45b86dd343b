"""Running a stack's HTTPS proxy: Caddy checks its files first, the engine delivers them, HTTP probes it.

The proxy's Caddyfile, certificate and key reach it through a named volume filled through the engine API (never
a bind mount), so a fleet host's remote engine gets them the same way as the local one. ``validate`` runs
``caddy validate`` on the rendered files in a short-lived container before anything is written; ``deliver``
puts them into the volume, owned by the proxy's user (the key 0400), before compose starts the stack.
"""

from __future__ import annotations

import io
import ssl
import tarfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from deploykit.planning.render import TLS_DIR
from deploykit.seams import certificates, engine
from deploykit.values.errors import PreflightError, UsageError
from deploykit.values.services import TLS_PROXY
from deploykit.values.stackfiles import CADDYFILE, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE

if TYPE_CHECKING:
    from deploykit.running.stack import LoadedStack
    from deploykit.seams.compose import Stack
    from deploykit.seams.engine import EngineAddress

PROXY_USER = 65534  # the tls-proxy service's user (compose.yaml's `user:`): nobody
VOLUME = "tls-proxy"  # the compose volume mounted at TLS_DIR
# Stack folder file -> (name in TLS_DIR, mode): what the Caddyfile reads, the key readable by its owner only.
SERVED = {CADDYFILE: ("Caddyfile", 0o444), TLS_CERT_FILE: ("cert.pem", 0o444), TLS_KEY_FILE: ("key.pem", 0o400)}
VALIDATE = ["caddy", "validate", "--config", f"{TLS_DIR}/Caddyfile", "--adapter", "caddyfile"]


def archive(files: Mapping[str, str], prefix: str = "") -> bytes:
    """An uncompressed tar of the proxy's files (from the stack's rendered ``files``), owned by its user."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if prefix:
            folder = tarfile.TarInfo(prefix)
            folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o755, 0, 0
            tar.addfile(folder)
        for source, (name, mode) in SERVED.items():
            data = files[source].encode("utf-8")
            info = tarfile.TarInfo(f"{prefix}/{name}" if prefix else name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, PROXY_USER, PROXY_USER
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _caddy_env() -> dict[str, str]:
    # Caddy keeps its state under the XDG folders; nobody's home does not exist.
    return {"XDG_CONFIG_HOME": "/tmp/caddy-config", "XDG_DATA_HOME": "/tmp/caddy-data", "HOME": "/tmp"}


def validate(stack: LoadedStack, docker_host: EngineAddress, files: Mapping[str, str]) -> None:
    """``caddy validate`` on the rendered Caddyfile, certificate and key, in the proxy's image, as its user."""
    image = stack.spec.images[TLS_PROXY]
    if not engine.image_present(docker_host, image):
        engine.pull_image(docker_host, image)
    code, out = engine.run_with_files(
        docker_host,
        image,
        VALIDATE,
        archive(files, TLS_DIR.lstrip("/")),
        user=f"{PROXY_USER}:{PROXY_USER}",
        env=_caddy_env(),
        labels={"org.deploykit.managed": "true", "org.deploykit.stack": stack.spec.project},
    )
    if code != 0:
        lines = [line for line in out.strip().splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        detail = (errors or lines or [f"exit code {code}"])[-1]
        raise PreflightError(
            f"Caddy ({image}) refuses the stack's HTTPS configuration: {detail.strip()[:300]}; nothing was started.",
            f"`deploykit render --dir {stack.dir}` writes it again; a site's own caddy/Caddyfile.j2 template is "
            "compared with the built-in one by `deploykit templates export DIR`.",
        )


def deliver(stack: LoadedStack, docker_host: EngineAddress, engine_stack: Stack, files: Mapping[str, str]) -> None:
    """The proxy's files into its volume (compose creates both the volume and the proxy, without starting it)."""
    engine_stack.create(TLS_PROXY)
    volume = engine_stack.volume_name(VOLUME)
    if volume is None:
        raise PreflightError(
            f"compose did not create the {VOLUME} volume of {stack.spec.project}.", "See `docker volume ls`."
        )
    engine.put_files_in_volume(
        docker_host,
        volume,
        stack.spec.images[TLS_PROXY],
        TLS_DIR,
        archive(files),
        labels={"org.deploykit.managed": "true", "org.deploykit.stack": stack.spec.project},
    )


def probe(stack: LoadedStack) -> Callable[[], str]:
    """The health stage's probe: a verified TLS handshake and an HTTP answer from the proxy (Open WebUI may
    still be starting), and plain HTTP to the same address redirected to https://."""
    import httpx

    from deploykit.seams.health import NotReady, StageFailed

    plain = f"http://{stack.address}:{stack.spec.webui_port}/"
    secure = stack.webui_url + "/"

    def check() -> str:
        try:
            with stack.webui_client(timeout=5) as client:
                status = client.get("/health").status_code
        except httpx.TransportError as exc:
            refused = exc.__context__
            if isinstance(refused, ssl.SSLCertVerificationError):
                raise StageFailed(f"the proxy's certificate is not accepted: {refused.verify_message}") from None
            raise NotReady(f"{secure}: {exc or type(exc).__name__}") from None
        try:
            with httpx.Client(timeout=5, trust_env=False, follow_redirects=False) as client:
                r = client.get(plain + "?deploykit=redirect")
        except httpx.TransportError as exc:
            raise NotReady(f"{plain}: {exc or type(exc).__name__}") from None
        if r.status_code not in (301, 302, 307, 308) or r.headers.get("location") != secure + "?deploykit=redirect":
            raise StageFailed(f"plain HTTP to {plain} answered {r.status_code}, not a redirect to {secure}")
        return f"certificate accepted (HTTP {status} through it); plain HTTP redirected ({r.status_code})"

    return check


TRUST = {
    "Debian/Ubuntu": "sudo cp {ca} /usr/local/share/ca-certificates/deploykit-site-ca.crt"
    " && sudo update-ca-certificates",
    "Chrome/Chromium on Linux": "certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n 'deploykit site CA' -i {ca}",
    "macOS": "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}",
    "Windows (admin)": "certutil -addstore -f Root {ca}",
    "Firefox": "Settings → Privacy & Security → Certificates → View Certificates → Authorities → Import {ca}",
}


def describe(stack: LoadedStack, now: datetime | None = None) -> dict[str, object]:
    """The stack's HTTPS for `status --json` and `up`: its address, certificate, expiry and the CA to trust."""
    spec = stack.spec.tls
    assert spec is not None
    now = now or datetime.now(UTC)
    cert = stack.dir / TLS_CERT_FILE
    try:
        not_after = certificates.expiry(cert)
    except UsageError:  # a missing or damaged file: plan.json's record says when it was due
        not_after = datetime.fromisoformat(spec.not_after)
    ca = stack.dir / TLS_CA_FILE if spec.mode == "internal" else None
    return {
        "mode": spec.mode,
        "url": spec.url(stack.spec.webui_port),
        "names": list(spec.names),
        "cert_file": str(cert),
        "ca_file": str(ca) if ca else None,
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "trust": {where: how.format(ca=ca) for where, how in TRUST.items()} if ca else {},
    }
