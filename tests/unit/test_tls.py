"""HTTPS in front of Open WebUI: the site CA and its certificates, a site's own pair checked, the --tls parser,
the rendered proxy service and Caddyfile, `doctor`'s expiry check, and bad --tls input in words.

The certificates a site brings are made by tests/tlscerts.py with `cryptography` directly.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploykit.cli import cli
from deploykit.planning.render import caddy_quote
from deploykit.seams import certificates
from deploykit.values import tls
from deploykit.values.errors import ConfigError, UsageError
from tests.tlscerts import Pair, make_ca, make_pair, secret_lines
from tests.unit.conftest import ROOT, compose_config, render

CPU = ("-p", "cpu")
ENV = {"DEPLOYKIT_MODEL_CACHE": "/srv/deploykit-test/models"}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---------------------------------------------------------------- the site CA and its certificates


def test_the_site_ca_is_made_once_in_the_config_folder_with_a_private_key() -> None:
    first = certificates.site_ca()
    folder = Path(os.environ["XDG_CONFIG_HOME"]) / "deploykit" / "tls"
    assert first.folder == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "ca.pem").stat().st_mode) == 0o644
    again = certificates.site_ca()
    assert certificates.fingerprint(again.cert) == certificates.fingerprint(first.cert)
    constraints = first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = first.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert first.cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=3000)


def test_hosts_rendered_side_by_side_share_one_site_ca() -> None:
    seen: list[str] = []

    def one() -> None:
        seen.append(certificates.fingerprint(certificates.site_ca().cert))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1


def test_a_certificate_names_dns_names_and_addresses_and_serves_only() -> None:
    ca = certificates.site_ca()
    cert, key = certificates.issue(ca, ("lab-01.example.org", "lab-01", "192.168.1.20", "127.0.0.1", "::1"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["lab-01.example.org", "lab-01"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.20", "127.0.0.1", "::1"]
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=certificates.LEAF_DAYS, hours=1)
    assert certificates.cert_names(cert) == ("lab-01.example.org", "lab-01", "192.168.1.20", "127.0.0.1", "::1")
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_names_are_cleaned_and_this_machine_names_its_lan_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls.usable_names(["Lab-01.", "lab-01", "192.168.1.5", "bad name", "a_b", "::ffff:1.2.3.4"]) == (
        "lab-01",
        "192.168.1.5",
        "::ffff:102:304",
    )
    from deploykit.seams import detect

    monkeypatch.setattr(
        detect,
        "host_addresses",
        lambda: (
            detect.Address("lo", "127.0.0.1"),
            detect.Address("eth0", "192.168.1.5"),
            detect.Address("docker0", "172.17.0.1"),
            detect.Address("br-1234", "172.18.0.1"),
        ),
    )
    monkeypatch.setattr("socket.gethostname", lambda: "lab-01")
    monkeypatch.setattr("socket.getfqdn", lambda: "lab-01.physics.example.org")
    names = certificates.local_names("0.0.0.0")
    assert names == ("lab-01", "lab-01.physics.example.org", "127.0.0.1", "192.168.1.5", "localhost")
    assert certificates.local_names("127.0.0.1") == ("localhost", "127.0.0.1")
    assert certificates.local_names("192.168.1.5") == ("192.168.1.5", "localhost", "127.0.0.1")


def test_a_stack_keeps_its_certificate_until_names_ca_or_time_say_otherwise(tmp_path: Path) -> None:
    names = ("lab-01", "127.0.0.1")
    first = certificates.internal(tmp_path, names)
    assert first.notes and "issued a certificate" in first.notes[0]
    for name, text in first.files.items():
        (tmp_path / name).write_text(text)
    kept = certificates.internal(tmp_path, names)
    assert kept.spec == first.spec and kept.files == first.files and not kept.notes  # render stays byte-identical
    assert certificates.internal(tmp_path, ("127.0.0.1",)).spec == first.spec  # a subset of its names: still good
    grown = certificates.internal(tmp_path, (*names, "192.168.1.7"))
    assert grown.spec.cert_sha256 != first.spec.cert_sha256 and "192.168.1.7" in grown.spec.names
    # 30 days before it expires, it is issued again.
    late = datetime.now(UTC) + timedelta(days=certificates.LEAF_DAYS - certificates.RENEW_DAYS + 1)
    assert certificates.internal(tmp_path, names, now=late).spec.cert_sha256 != first.spec.cert_sha256
    # Another site CA (the folder was moved away): a certificate from the new one.
    folder = certificates.ca_folder()
    folder.rename(folder.with_name("tls-old"))
    assert certificates.internal(tmp_path, names).spec.cert_sha256 != first.spec.cert_sha256


def test_a_damaged_site_ca_is_said_not_replaced() -> None:
    certificates.site_ca()
    key = certificates.ca_folder() / "ca-key.pem"
    key.write_text("garbage\n")
    with pytest.raises(ConfigError, match=r"site CA in .* cannot be used: the key file .* holds no PEM private key"):
        certificates.site_ca()
    assert key.read_text() == "garbage\n"


# ---------------------------------------------------------------- the --tls value


@pytest.mark.parametrize(
    ("value", "mode"),
    [("internal", "internal"), ("INTERNAL", "internal"), ("off", None), ("a.pem,b.key", "files")],
)
def test_the_tls_value_is_parsed(value: str, mode: str | None) -> None:
    choice = tls.parse_choice(value)
    assert (choice.mode if choice else None) == mode
    if choice and choice.mode == "files":
        assert choice.cert == Path("a.pem") and choice.key == Path("b.key")


@pytest.mark.parametrize("value", ["yes", "a.pem", "a.pem,", ",b.key", "a,b,c", "a.pem,b\nkey"])
def test_a_tls_value_that_is_neither_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"is not 'internal', 'off' or CERT,KEY|NUL byte or a line break"):
        tls.parse_choice(value)


def test_a_sites_own_pair_is_checked_and_read_as_given(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, ("llm.lab.example.org", "*.lab.example.org", "192.168.1.9"), rsa_key=True)
    found = certificates.check_pair(pair.cert, pair.key)
    assert found.spec.mode == "files" and found.spec.cert_path == str(pair.cert)
    assert found.spec.names == ("llm.lab.example.org", "192.168.1.9")  # a wildcard names no host to print
    assert found.spec.url(7860) == "https://llm.lab.example.org:7860"
    assert found.files["tls-cert.pem"].count("BEGIN CERTIFICATE") == 2  # the chain as given, leaf first
    assert "PRIVATE KEY" in found.files["tls-key.pem"] and "tls-ca.pem" not in found.files
    assert certificates.fingerprint(pair.certificate) == found.spec.cert_sha256


def test_a_pair_close_to_expiry_or_without_names_is_said(tmp_path: Path) -> None:
    soon = certificates.check_pair(*_files(make_pair(tmp_path / "a", days=(-300, 10))))
    assert any("expires in 9 days" in n or "expires in 10 days" in n for n in soon.notes), soon.notes
    bare = certificates.check_pair(*_files(make_pair(tmp_path / "b", ())))
    assert any("no subjectAltName" in n for n in bare.notes)


def _files(pair: object) -> tuple[Path, Path]:
    return pair.cert, pair.key  # type: ignore[attr-defined]


# ---------------------------------------------------------------- render with HTTPS


def _tls_env(**extra: str) -> dict[str, str]:
    return {"DEPLOYKIT_TLS": "internal", **extra}


def test_render_with_tls_internal_puts_open_webui_behind_caddy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYKIT_TLS", "internal")
    monkeypatch.setenv("DEPLOYKIT_WEBUI_ENV__WEBUI_NAME", "Physics Lab")
    result = render(tmp_path, profile="cpu")
    stack = result.stack_dir
    assert result.spec.tls is not None and result.spec.tls.mode == "internal"
    assert result.spec.images["tls-proxy"] == "caddy:2.6"
    for name in ("Caddyfile", "tls-cert.pem", "tls-key.pem", "tls-ca.pem"):
        assert (stack / name).is_file(), name
    assert stat.S_IMODE((stack / "tls-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((stack / "tls-cert.pem").stat().st_mode) == 0o644
    assert (stack / "tls-ca.pem").read_text() == (certificates.ca_folder() / "ca.pem").read_text()
    config = compose_config(stack)
    services = config["services"]
    assert "ports" not in services["open-webui"]  # not on the LAN itself: only through the proxy
    proxy = services["tls-proxy"]
    assert proxy["ports"][0]["published"] == "7860" and proxy["ports"][0]["target"] == 8443
    assert proxy["ports"][0]["host_ip"] == "0.0.0.0"
    assert proxy["read_only"] is True and proxy["user"] == "65534:65534" and proxy["cap_drop"] == ["ALL"]
    assert proxy["volumes"][0]["source"] == "tls-proxy" and proxy["volumes"][0]["read_only"] is True
    env = services["open-webui"]["environment"]
    assert env["WEBUI_SESSION_COOKIE_SECURE"] == env["WEBUI_AUTH_COOKIE_SECURE"] == "true"
    assert "WEBUI_URL" not in env  # stored by Open WebUI: written through its API, so a new name restarts nothing
    assert result.spec.tls.url(7860).startswith("https://") and result.spec.tls.url(7860).endswith(":7860")
    assert result.spec.webui_settings["WEBUI_URL"] == result.spec.tls.url(7860)
    assert env["WEBUI_NAME"] == "Physics Lab"
    plan = json.loads((stack / "plan.json").read_text())
    assert plan["stack"]["tls"]["mode"] == "internal" and plan["stack"]["tls"]["cert_sha256"]
    caddyfile = (stack / "Caddyfile").read_text()
    assert re.search(r"^\tadmin off$", caddyfile, re.M)
    assert re.search(r"listener_wrappers \{\n\s+#[^\n]*\n\s+http_redirect\n\s+tls\n", caddyfile)
    assert 'tls "/etc/deploykit-tls/cert.pem" "/etc/deploykit-tls/key.pem"' in caddyfile
    assert 'reverse_proxy "open-webui:8080"' in caddyfile
    assert "https://:8443 {" in caddyfile


def test_a_site_value_wins_over_https_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYKIT_TLS", "internal")
    monkeypatch.setenv("DEPLOYKIT_WEBUI_ENV__WEBUI_URL", "https://llm.lab.example.org")
    result = render(tmp_path, profile="cpu")
    text = (result.stack_dir / "compose.yaml").read_text()
    assert text.count("WEBUI_URL") == 1 and '"WEBUI_URL": "https://llm.lab.example.org"' in text
    assert result.spec.webui_settings["WEBUI_URL"] == "https://llm.lab.example.org"


def test_rendering_again_is_byte_identical_and_tls_off_goes_back_to_plain_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYKIT_TLS", "internal")
    first = render(tmp_path, profile="cpu")
    snapshot = {p.name: p.read_bytes() for p in first.stack_dir.iterdir()}
    monkeypatch.delenv("DEPLOYKIT_TLS")  # unset: the stack keeps what it was rendered with
    assert render(tmp_path, profile="cpu").changed == []
    assert {p.name: p.read_bytes() for p in first.stack_dir.iterdir()} == snapshot
    monkeypatch.setenv("DEPLOYKIT_TLS", "off")
    off = render(tmp_path, profile="cpu")
    assert off.spec.tls is None and "tls-proxy" not in off.spec.images
    config = compose_config(off.stack_dir)
    assert "tls-proxy" not in config["services"] and config["services"]["open-webui"]["ports"]
    assert "tls" not in json.loads((off.stack_dir / "plan.json").read_text())["stack"]


def test_the_reference_stacks_have_no_https() -> None:
    plan = json.loads((ROOT / "compose" / "cpu" / "plan.json").read_text())
    assert "tls" not in plan["stack"] and "tls-proxy" not in (ROOT / "compose" / "cpu" / "compose.yaml").read_text()


def test_render_with_a_sites_own_pair(tmp_path: Path) -> None:
    pair = make_pair(tmp_path / "pki", ("llm.lab.example.org",))
    result = CliRunner().invoke(
        cli, ["render", *CPU, "--dir", str(tmp_path / "s"), "--tls", f"{pair.cert},{pair.key}"], env=ENV
    )
    assert result.exit_code == 0, result.output
    stack = tmp_path / "s"
    assert (stack / "tls-cert.pem").read_bytes() == pair.cert.read_bytes()
    assert not (stack / "tls-ca.pem").exists()
    assert json.loads((stack / "plan.json").read_text())["stack"]["tls"]["key_path"] == str(pair.key)
    for line in secret_lines(pair):
        assert line not in result.output and line not in (stack / "plan.json").read_text()
    env = yaml.safe_load((stack / "compose.yaml").read_text())["services"]["open-webui"]["environment"]
    assert env["WEBUI_AUTH_COOKIE_SECURE"] == "true"
    assert json.loads((stack / "plan.json").read_text())["stack"]["tls"]["names"] == ["llm.lab.example.org"]


def test_tls_is_for_compose_stacks(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["render", *CPU, "--dir", str(tmp_path / "s"), "--target", "swarm", "--tls", "internal"], env=ENV
    )
    assert result.exit_code == 2 and "HTTPS (--tls) is made for Compose stacks" in result.output
    assert not (tmp_path / "s").exists()


def test_caddyfile_values_are_quoted_and_what_cannot_be_is_refused() -> None:
    assert caddy_quote("lab-01") == '"lab-01"'
    assert caddy_quote('a"b') == '"a\\"b"'
    for bad in ("a\nb", "{$HOME}", "a\\b"):
        with pytest.raises(UsageError):
            caddy_quote(bad)


# ---------------------------------------------------------------- the proxy's files, the client's check, doctor


def test_the_proxys_files_are_owned_by_its_user_and_the_key_is_readable_by_it_only() -> None:
    import io
    import tarfile

    from deploykit.running import tls_proxy

    data = tls_proxy.archive({"Caddyfile": "x\n", "tls-cert.pem": "c\n", "tls-key.pem": "k\n"}, "etc/deploykit-tls")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar}
    assert members["etc/deploykit-tls"].isdir()
    key = members["etc/deploykit-tls/key.pem"]
    assert (key.mode, key.uid, key.gid) == (0o400, 65534, 65534)
    assert members["etc/deploykit-tls/cert.pem"].mode == 0o444


def _loaded(stack_dir: Path):  # type: ignore[no-untyped-def]
    from deploykit.running.stack import load_stack

    return load_stack(stack_dir)


def test_deploykit_checks_the_proxy_against_the_site_ca_or_pins_a_sites_own_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    monkeypatch.setenv("DEPLOYKIT_TLS", "internal")
    internal = _loaded(render(tmp_path, "a", profile="cpu").stack_dir)
    assert internal.spec.tls is not None
    context = certificates.client_context(internal.spec.tls, internal.dir)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert internal.webui_url == "https://127.0.0.1:7860"
    pair = make_pair(tmp_path / "pki", ("llm.lab.example.org",))
    monkeypatch.setenv("DEPLOYKIT_TLS", f"{pair.cert},{pair.key}")
    own = _loaded(render(tmp_path, "b", profile="cpu").stack_dir)
    assert own.spec.tls is not None
    pinned = certificates.client_context(own.spec.tls, own.dir)
    assert not pinned.check_hostname and pinned.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert pinned.cert_store_stats()["x509"] == 1  # the leaf, not the chain's CA
    # A real handshake on loopback: the pinned pair passes at 127.0.0.1 (not among its names) …
    assert _handshake(pair, pinned) == "ok"
    # … and another certificate from the same CA, for the same name, does not: only that leaf is trusted.
    sibling = make_pair(tmp_path / "sibling", ("llm.lab.example.org",), ca=make_ca(tmp_path / "pki"))
    assert "certificate verify failed" in _handshake(sibling, pinned)
    # The site CA's context checks the name: a certificate it issued for another name is refused.
    assert _handshake(pair, context) != "ok"


def _handshake(pair: object, client: object) -> str:
    """Serve ``pair`` once on a loopback port; what a client with context ``client`` makes of it."""
    import socket
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair.cert, pair.key)  # type: ignore[attr-defined]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1"),  # type: ignore[attr-defined]
        ):
            return "ok"
    except ssl.SSLError as exc:
        return str(exc)
    finally:
        worker.join(5)
        listener.close()


def test_status_json_names_the_ca_file_and_the_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploykit.running import tls_proxy

    monkeypatch.setenv("DEPLOYKIT_TLS", "internal")
    stack = _loaded(render(tmp_path, profile="cpu").stack_dir)
    block = tls_proxy.describe(stack)
    assert block["ca_file"] == str(stack.dir / "tls-ca.pem") and Path(str(block["ca_file"])).is_file()
    assert block["days_left"] in (certificates.LEAF_DAYS - 1, certificates.LEAF_DAYS)
    assert str(block["url"]).startswith("https://") and "update-ca-certificates" in str(block["trust"])


@pytest.mark.parametrize(("days", "status"), [((-300, 90), "pass"), ((-300, 20), "warn"), ((-300, -1), "fail")])
def test_doctor_reports_the_certificates_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, days: tuple[int, int], status: str
) -> None:
    from deploykit.running.doctor import Inputs, check_tls
    from deploykit.seams.engine import EngineAddress
    from deploykit.values.host import Cpu, HostProfile, Memory

    pair = make_pair(tmp_path / "pki", days=(-300, 120))
    monkeypatch.setenv("DEPLOYKIT_TLS", f"{pair.cert},{pair.key}")
    stack = _loaded(render(tmp_path, profile="cpu").stack_dir)
    later = make_pair(tmp_path / "later", days=days)  # the file on disk expires as the case says
    (stack.dir / "tls-cert.pem").write_bytes(later.cert.read_bytes())
    cpu = Cpu(arch="x86_64", physical_cores=2, logical_cores=2)
    host = HostProfile(name="x", cpu=cpu, memory=Memory(total_bytes=1))
    checks = check_tls(Inputs(host, EngineAddress(), tmp_path, stack, []))
    assert [c.status for c in checks] == [status], checks
    assert checks[0].name == "tls" and (status == "pass" or "deploykit up" in checks[0].fix)


# ---------------------------------------------------------------- bad --tls input: one sentence, nothing written


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


# id, what, the --tls value (made from the test folder and a good pair), exit, what the message says
BAD: list[tuple[str, str, Callable[[Path, Pair], str], int, str]] = [
    (
        "L01",
        "the certificate file does not exist",
        lambda t, p: f"{t / 'nope.pem'},{p.key}",
        3,
        r"certificate file .*nope\.pem does not exist",
    ),
    (
        "L02",
        "the key file does not exist",
        lambda t, p: f"{p.cert},{t / 'nope.key'}",
        3,
        r"key file .*nope\.key does not exist",
    ),
    (
        "L03",
        "the certificate is a named pipe (reading it would hang)",
        lambda t, p: f"{_fifo(t / 'pipe')},{p.key}",
        2,
        r"is a named pipe, not a PEM file",
    ),
    (
        "L04",
        "the key is a named pipe",
        lambda t, p: f"{p.cert},{_fifo(t / 'kpipe')}",
        2,
        r"key file .* is a named pipe",
    ),
    (
        "L05",
        "the certificate is a directory",
        lambda t, p: f"{t},{p.key}",
        2,
        r"is a directory, not a PEM file",
    ),
    (
        "L06",
        "the certificate is a device (/dev/zero)",
        lambda t, p: f"/dev/zero,{p.key}",
        2,
        r"/dev/zero is a device",
    ),
    (
        "L07",
        "the certificate is not PEM (DER bytes)",
        lambda t, p: f"{_der(t, p)},{p.key}",
        2,
        r"is not PEM text .*DER",
    ),
    (
        "L08",
        "the certificate file holds text but no certificate",
        lambda t, p: f"{_text(t / 'c.pem', 'hello')},{p.key}",
        2,
        r"holds no PEM certificate",
    ),
    (
        "L09",
        "CERT and KEY swapped",
        lambda t, p: f"{p.key},{p.cert}",
        2,
        r"holds no PEM certificate \(it holds a private key: the order is --tls CERT,KEY\)",
    ),
    (
        "L10",
        "a key that belongs to another certificate",
        lambda t, p: f"{p.cert},{make_pair(t / 'other').key}",
        2,
        r"does not belong to the certificate",
    ),
    (
        "L11",
        "an expired certificate",
        lambda t, p: _pair_value(make_pair(t / "old", days=(-400, -2))),
        2,
        r"expired on 20\d\d-",
    ),
    (
        "L12",
        "a certificate not valid yet",
        lambda t, p: _pair_value(make_pair(t / "new", days=(5, 90))),
        2,
        r"is not valid before 20\d\d-",
    ),
    (
        "L13",
        "an encrypted key",
        lambda t, p: _pair_value(make_pair(t / "enc", password=b"hunter2")),
        2,
        r"is encrypted; Caddy needs the key without a passphrase",
    ),
    (
        "L14",
        "a certificate file larger than 1 MiB",
        lambda t, p: f"{_text(t / 'big.pem', 'A' * (1 << 21))},{p.key}",
        2,
        r"larger than 1 MiB",
    ),
    (
        "L15",
        "--tls with one path",
        lambda t, p: f"{p.cert}",
        4,
        r"--tls: .* is not 'internal', 'off' or CERT,KEY",
    ),
    (
        "L16",
        "a key file whose read fails (/proc/self/mem: a regular file that answers EIO)",
        lambda t, p: f"{p.cert},/proc/self/mem",
        2,
        r"cannot read the key file /proc/self/mem: Input/output error",
    ),
]


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _der(t: Path, pair: object) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = t / "cert.der"
    path.write_bytes(pair.certificate.public_bytes(serialization.Encoding.DER))  # type: ignore[attr-defined]
    return path


def _pair_value(pair: object) -> str:
    return f"{pair.cert},{pair.key}"  # type: ignore[attr-defined]


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
        for p in sorted(folder.rglob("*"))
        if not stat.S_ISFIFO(p.lstat().st_mode)
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rendered") / "s"
    result = CliRunner().invoke(cli, ["render", *CPU, "--dir", str(folder)], env=ENV)
    assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize(("case_id", "what", "value", "code", "says"), BAD, ids=[c[0] for c in BAD])
@pytest.mark.parametrize("command", ["render", "up"])
def test_bad_tls_input(
    case_id: str,
    what: str,
    value: Callable[[Path, Pair], str],
    code: int,
    says: str,
    command: str,
    rendered: Path,
    tmp_path: Path,
) -> None:
    import shutil

    shutil.copytree(rendered, tmp_path / "s")
    pair = make_pair(tmp_path / "pki")
    tls_value = value(tmp_path, pair)
    before = _snapshot(tmp_path)
    new = tmp_path / "fresh-stack"
    for folder in (tmp_path / "s", new):  # an existing stack, and one not yet made
        args = [command, *CPU, "--dir", str(folder), "--tls", tls_value]
        if command == "up":
            args = ["--docker-host", "unix:///nonexistent.sock", *args]
        result = CliRunner().invoke(cli, args, env=ENV, catch_exceptions=False)
        out = result.output
        assert result.exit_code == code, out
        assert re.search(says, out, re.S), out
        assert "Traceback" not in out and "internal error" not in out
        assert len([line for line in out.splitlines() if line.startswith("Error: ")]) == 1, out
        assert "Hint: " in out
        for line in secret_lines(pair):
            assert line not in out
        assert _snapshot(tmp_path) == before, "files changed"
        assert not new.exists()


def test_every_tls_case_is_in_the_docs() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| ")}
    for case_id, _, _, code, _ in BAD:
        assert case_id in rows, f"{case_id} is missing from docs/reliability.md"
        assert f"| {code} |" in rows[case_id], f"{case_id}: the doc gives another exit code"


def test_a_fleet_with_a_bad_pair_is_refused_once_before_any_host(tmp_path: Path) -> None:
    inventory = tmp_path / "lab.toml"
    inventory.write_text('[[hosts]]\nname = "lab-01"\nengine = "unix:///nonexistent.sock"\n', encoding="utf-8")
    pair = make_pair(tmp_path / "pki", days=(-400, -2))
    for command in ("render", "up"):
        result = CliRunner().invoke(
            cli,
            ["fleet", command, "--inventory", str(inventory), "--dir", str(tmp_path / "fleet"),
             "--tls", f"{pair.cert},{pair.key}"],
            env=ENV,
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "expired on" in result.output and result.output.count("Error: ") == 1
        assert not (tmp_path / "fleet").exists()
