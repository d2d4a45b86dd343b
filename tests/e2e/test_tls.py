"""HTTPS in front of Open WebUI on the real engine: `up --tls internal` to a chat through the Caddy proxy, a real
headless Chromium that trusts the site CA (a throw-away NSS database, never --ignore-certificate-errors), plain
HTTP redirected, Open WebUI published through the proxy only, and then the same stack on a pair the test made.

One stack for the module (ports 32860-32861); its site CA lives in the module's own config folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.e2e.browser import CHROMIUM_ARGS
from tests.e2e.conftest import ARTIFACTS, GGUF, MODEL_ID, Stack, deploykit, docker, make_stack, need, running, secrets
from tests.e2e.netns_browser import isolated_chromium
from tests.tlscerts import make_pair, secret_lines

pytestmark = pytest.mark.e2e

UI, INFERENCE = 32860, 32861


@pytest.fixture(scope="module")
def tls_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need("CADDY_IMAGE" in engine, "the Caddy image is not built (scripts/provision/image-caddy.sh)")
    base = tmp_path_factory.mktemp("tls")
    stack = make_stack(base, "e2e-tls", UI, INFERENCE)
    stack.env["XDG_CONFIG_HOME"] = str(base / "config")  # this module's site CA
    args = ("--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--tls", "internal")
    with running(stack, engine, *args, "--image", f"tls-proxy={engine['CADDY_IMAGE']}"):
        yield stack


def _site_ca(stack: Stack) -> Path:
    return Path(stack.env["XDG_CONFIG_HOME"]) / "deploykit" / "tls" / "ca.pem"


def _status(stack: Stack) -> dict[str, object]:
    r = deploykit("status", "--dir", str(stack.dir), "--json", env=stack.env)
    assert r.code == 0, r.err
    data = r.json
    assert isinstance(data, dict)
    return data


def _container(stack: Stack, service: str) -> dict[str, object]:
    out = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}",
                 "--filter", f"label=com.docker.compose.service={service}")  # fmt: skip
    assert out.strip(), f"no {service} container"
    found: list[dict[str, object]] = json.loads(docker("inspect", out.split()[0]))
    return found[0]


def test_up_serves_https_and_says_how_to_trust_the_site_ca(tls_stack: Stack) -> None:
    assert tls_stack.up_result is not None
    out = tls_stack.up_result.out + tls_stack.up_result.err
    assert "✓ tls-proxy https" in out and "plain HTTP redirected (308)" in out, out
    assert "✓ chat via open-webui" in out
    assert f"Ready: open https://localhost:{UI}" in out
    assert "Trust the site CA once on each machine" in out and "update-ca-certificates" in out
    ca = tls_stack.dir / "tls-ca.pem"
    assert ca.read_bytes() == _site_ca(tls_stack).read_bytes()  # the stack's copy is the site's one CA
    assert oct((tls_stack.dir / "tls-key.pem").stat().st_mode & 0o777) == "0o600"
    state = _status(tls_stack)
    assert state["healthy"] is True
    block = state["tls"]
    assert isinstance(block, dict) and block["ca_file"] == str(ca) and block["mode"] == "internal"
    assert "127.0.0.1" in block["names"] and block["days_left"] >= 360
    assert [s["service"] for s in state["services"]] == ["inference", "open-webui", "tls-proxy"]  # type: ignore[union-attr,index]


def _stored_webui_url(stack: Stack, verify: ssl.SSLContext) -> object:
    """Open WebUI's own WEBUI_URL setting (its database's webui.url), read as the admin over HTTPS."""
    creds = secrets(stack)
    with httpx.Client(base_url=f"https://127.0.0.1:{UI}", verify=verify, trust_env=False, timeout=30) as client:
        signin = client.post(
            "/api/v1/auths/signin",
            json={"email": creds["DEPLOYKIT_ADMIN_EMAIL"], "password": creds["DEPLOYKIT_ADMIN_PASSWORD"]},
        )
        signin.raise_for_status()
        config = client.get("/api/v1/configs/export", headers={"Authorization": f"Bearer {signin.json()['token']}"})
        config.raise_for_status()
    data = config.json()
    return data.get("webui.url", (data.get("webui") or {}).get("url"))


def test_open_webui_knows_its_https_address(tls_stack: Stack) -> None:
    trusted = ssl.create_default_context(cafile=str(tls_stack.dir / "tls-ca.pem"))
    block = _status(tls_stack)["tls"]
    assert isinstance(block, dict)
    assert _stored_webui_url(tls_stack, trusted) == block["url"] and str(block["url"]).startswith("https://")


def test_plain_http_to_the_ui_address_is_redirected_to_https(tls_stack: Stack) -> None:
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=10) as client:
        r = client.get(f"http://127.0.0.1:{UI}/auth?redirect=%2Fc%2F1")
    assert r.status_code == 308
    assert r.headers["location"] == f"https://127.0.0.1:{UI}/auth?redirect=%2Fc%2F1"


def test_https_is_trusted_through_the_site_ca_and_not_otherwise(tls_stack: Stack) -> None:
    trusted = ssl.create_default_context(cafile=str(tls_stack.dir / "tls-ca.pem"))
    with httpx.Client(verify=trusted, trust_env=False, timeout=10) as client:
        assert client.get(f"https://127.0.0.1:{UI}/health").json() == {"status": True}
        assert client.get(f"https://localhost:{UI}/health").status_code == 200
    refused = pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED")
    with httpx.Client(trust_env=False, timeout=10) as client, refused:
        client.get(f"https://127.0.0.1:{UI}/health")  # the system's CAs do not know the site CA


def test_open_webui_is_published_only_through_the_proxy(tls_stack: Stack) -> None:
    webui = _container(tls_stack, "open-webui")
    ports = webui["NetworkSettings"]["Ports"]  # type: ignore[index]
    assert all(not bindings for bindings in ports.values()), ports  # type: ignore[union-attr]
    proxy = _container(tls_stack, "tls-proxy")
    bindings = proxy["NetworkSettings"]["Ports"]["8443/tcp"]  # type: ignore[index]
    assert [(b["HostIp"], b["HostPort"]) for b in bindings] == [("0.0.0.0", str(UI))]  # type: ignore[index]
    assert proxy["Config"]["User"] == "65534:65534"  # type: ignore[index]
    assert proxy["HostConfig"]["ReadonlyRootfs"] is True  # type: ignore[index]
    # No admin endpoint: `caddy stop` (which asks it) finds nothing to talk to.
    name = str(proxy["Name"]).lstrip("/")
    stop = subprocess.run(["docker", "exec", name, "caddy", "stop"], capture_output=True, text=True, check=False)
    assert stop.returncode != 0 and "2019" in stop.stderr + stop.stdout, stop
    assert _container(tls_stack, "tls-proxy")["State"]["Running"] is True  # type: ignore[index]
    # The key in the proxy's volume is the proxy user's alone.
    listing = subprocess.run(
        ["docker", "exec", name, "ls", "-ln", "/etc/deploykit-tls"], capture_output=True, text=True, check=True
    ).stdout
    key = [line for line in listing.splitlines() if line.endswith(" key.pem")]
    assert len(key) == 1 and key[0].startswith("-r-------- 1 65534 65534"), listing


def test_the_caddyfile_is_valid_for_the_caddy_in_the_image(tls_stack: Stack, engine: dict[str, str]) -> None:
    adapt = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{tls_stack.dir / 'Caddyfile'}:/Caddyfile:ro",
         engine["CADDY_IMAGE"], "caddy", "adapt", "--config", "/Caddyfile", "--adapter", "caddyfile"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert adapt.returncode == 0, adapt.stderr
    config = json.loads(adapt.stdout)
    assert config["admin"] == {"disabled": True}
    server = config["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == [":8443"]
    assert [w["wrapper"] for w in server["listener_wrappers"]] == ["http_redirect", "tls"]
    assert config["apps"]["tls"]["certificates"]["load_files"][0]["key"] == "/etc/deploykit-tls/key.pem"


def test_doctor_reports_the_certificates_expiry(tls_stack: Stack) -> None:
    r = deploykit("doctor", "--dir", str(tls_stack.dir), "--json", env=tls_stack.env)
    checks = [c for c in r.json["checks"] if c["name"] == "tls"]  # type: ignore[index]
    assert [c["status"] for c in checks] == ["pass", "pass"], checks
    assert "certificate tls-cert.pem expires" in checks[0]["detail"] and "site CA tls-ca.pem" in checks[1]["detail"]


def _nss_home(tmp: Path, ca: Path | None) -> Path:
    """A HOME whose NSS database (Chromium's trust store on Linux) trusts ``ca`` for servers, or nothing."""
    home = tmp / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    if ca is not None:
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{nssdb}", "-t", "C,,", "-n", "deploykit site CA", "-i", str(ca)],
            check=True,
            capture_output=True,
        )
    return home


# The assistant's answer as Open WebUI stored it, once it is complete (run in the page, with its own token).
STORED_ANSWER = """async (id) => {
    const r = await fetch(`/api/v1/chats/${id}`, {headers: {Authorization: `Bearer ${localStorage.token}`}});
    if (!r.ok) return null;
    const messages = Object.values((await r.json()).chat.history.messages);
    const answer = messages.find(m => m.role === "assistant" && m.done && (m.content || "").trim());
    return answer ? answer.content : null;
}"""


def _launch(playwright: Any, chromium: str, home: Path) -> Any:
    """Chromium with ``home`` as HOME (its NSS database is the trust store), headless, a fresh profile."""
    return playwright.chromium.launch_persistent_context(
        str(home / "profile"), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
        env={**os.environ, "HOME": str(home)}, viewport={"width": 1280, "height": 800},
    )  # fmt: skip


def _answer_shown(page: Any) -> str:
    """The answer to the message just sent: stored by Open WebUI, complete, and on the page."""
    page.wait_for_url("**/c/**", timeout=60_000)
    chat_id = page.url.rsplit("/", 1)[-1]
    for _ in range(180):  # the page's own session reads the chat back over HTTPS
        stored = page.evaluate(STORED_ANSWER, chat_id)
        if stored:
            page.wait_for_function(
                "t => [...document.querySelectorAll('#response-content-container')]"
                ".some(e => e.innerText.trim().length >= Math.min(t, 2))",
                arg=len(stored.strip()),
                timeout=30_000,
            )
            return str(stored)
        page.wait_for_timeout(1000)
    raise AssertionError("no answer was stored in 180 s")


def test_a_real_chromium_trusting_the_site_ca_signs_in_and_chats(tls_stack: Stack, tmp_path: Path) -> None:
    need(shutil.which("chromium") is not None, "Debian's chromium is not installed (scripts/provision/browser.sh)")
    need(shutil.which("certutil") is not None, "no certutil (libnss3-tools: scripts/provision/browser.sh)")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    creds = secrets(tls_stack)
    ARTIFACTS.mkdir(exist_ok=True)
    # Chromium in a network namespace of its own: the shared engine's interface churn cannot abort its requests.
    with isolated_chromium(tmp_path / "netns", [UI]) as chromium, sync_playwright() as p:
        # Control: the same browser without the CA refuses the certificate.
        untrusting = _launch(p, chromium, _nss_home(tmp_path / "bare", None))
        try:
            with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                untrusting.new_page().goto(f"https://127.0.0.1:{UI}/auth")
        finally:
            untrusting.close()

        browser = _launch(p, chromium, _nss_home(tmp_path / "trusting", tls_stack.dir / "tls-ca.pem"))
        page = browser.new_page()
        failed: list[str] = []  # requests that failed, for the message
        page.on("requestfailed", lambda r: failed.append(f"{r.failure} {r.url}"))
        try:
            # Typed as people type it: plain HTTP to the UI address, redirected to HTTPS.
            response = page.goto(f"http://127.0.0.1:{UI}/auth", wait_until="networkidle")
            assert response is not None and response.ok
            assert page.url == f"https://127.0.0.1:{UI}/auth"
            details = response.security_details()
            assert details is not None and str(details.get("issuer", "")).startswith("deploykit site CA")
            assert page.evaluate("window.isSecureContext") is True

            page.fill("input[type=email]", creds["DEPLOYKIT_ADMIN_EMAIL"])
            page.fill("input[type=password]", creds["DEPLOYKIT_ADMIN_PASSWORD"])
            page.click("button[type=submit]")
            page.wait_for_url("**/", timeout=60_000)
            with contextlib.suppress(PlaywrightTimeout):
                page.get_by_text("Okay, Let's Go!").click(timeout=10_000)
            # Open WebUI's session cookie is a secure one (WEBUI_SESSION_COOKIE_SECURE).
            assert [c["secure"] for c in browser.cookies() if c["name"] == "token"] == [True]

            page.click("#chat-input")
            page.keyboard.type("Say hello in five words.")
            page.keyboard.press("Enter")
            assert _answer_shown(page).strip()
            assert page.evaluate("window.isSecureContext") is True
            page.screenshot(path=str(ARTIFACTS / "open-webui-https-chat.png"))
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "open-webui-https-failure.png"))
            raise AssertionError(f"{exc}; failed requests: {failed[-8:]}") from exc
        finally:
            browser.close()


def _served_fingerprint(port: int) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def test_the_same_stack_on_a_pair_the_site_made(tls_stack: Stack, tmp_path: Path) -> None:
    """Last in the module: `up --tls CERT,KEY` turns the stack over to the site's own certificate."""
    pair = make_pair(tmp_path / "pki", ("llm.lab.example.org", "localhost", "127.0.0.1"))
    # Only --tls: the stack's plan (model, images, the proxy's image among them) is reused as it is.
    r = deploykit("up", "--tls", f"{pair.cert},{pair.key}", "--dir", str(tls_stack.dir), env=tls_stack.env, timeout=600)
    assert r.code == 0, r.err
    assert "✓ tls-proxy https" in r.out + r.err and "✓ chat via open-webui" in r.out + r.err
    for line in secret_lines(pair):
        assert line not in r.out + r.err
    assert _served_fingerprint(UI) == hashlib.sha256(pair.certificate.public_bytes(Encoding.DER)).hexdigest()
    site = ssl.create_default_context(cafile=str(pair.ca))
    with httpx.Client(verify=site, trust_env=False, timeout=10) as client:
        assert client.get(f"https://localhost:{UI}/health").status_code == 200
    block = _status(tls_stack)["tls"]
    assert isinstance(block, dict) and block["mode"] == "files" and block["ca_file"] is None
    # The site's name for it reached Open WebUI's own settings, without restarting it.
    assert _stored_webui_url(tls_stack, site) == f"https://llm.lab.example.org:{UI}"


def test_a_fleet_gets_one_site_ca_and_a_certificate_per_host(engine: dict[str, str], tmp_path: Path) -> None:
    """`fleet render --tls internal` on two hosts of the local engine: each its own certificate, for the name the
    inventory gives it (or this machine's names), both from the one site CA. No stack starts."""
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        '[[hosts]]\nname = "e2e-tls-a"\nengine = "unix:///var/run/docker.sock"\nprofile = "cpu"\n'
        "ui_port = 32880\ninference_port = 32881\n"
        '[[hosts]]\nname = "e2e-tls-b"\nengine = "unix:///var/run/docker.sock"\nprofile = "cpu"\n'
        'address = "lab-b.example.org"\nui_port = 32882\ninference_port = 32883\n',
        encoding="utf-8",
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    r = deploykit(
        "fleet", "render", "--inventory", str(inventory), "--dir", str(tmp_path / "fleet"), "--tls", "internal",
        "--model", MODEL_ID, "--model-file", str(GGUF), "--json", env=env, timeout=300,
    )  # fmt: skip
    assert r.code == 0, r.err
    hosts = {h["host"]: h for h in r.json["hosts"]}  # type: ignore[index]
    assert hosts["e2e-tls-a"]["url"] == "https://127.0.0.1:32880"
    assert hosts["e2e-tls-b"]["url"] == "https://lab-b.example.org:32882"
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((tmp_path / "config" / "deploykit" / "tls" / "ca.pem").read_bytes())
    names = {}
    for host in ("e2e-tls-a", "e2e-tls-b"):
        folder = tmp_path / "fleet" / host
        assert (folder / "tls-ca.pem").read_bytes() == ca.public_bytes(Encoding.PEM)
        cert = x509.load_pem_x509_certificate((folder / "tls-cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names[host] = {*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))}
    assert {"localhost", "127.0.0.1"} <= names["e2e-tls-a"]
    assert names["e2e-tls-b"] == {"lab-b.example.org"}
