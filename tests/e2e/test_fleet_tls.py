"""A fleet host reached over tcp:// with TLS: the second engine's TLS listener (scripts/provision/
engine-second.sh: tcp://127.0.0.1:22876, --tlsverify, a CA made there). `fleet detect` only: no stack starts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import deploykit, images, need

pytestmark = pytest.mark.e2e


def tls_engine() -> tuple[str, Path]:
    found = images()
    return found.get("SECOND_ENGINE_TLS", "tcp://127.0.0.1:22876"), Path(
        found.get("SECOND_ENGINE_CERTS", "/etc/deploykit-second/tls/client")
    )


def inventory(folder: Path, url: str, extra: str) -> Path:
    path = folder / "lab.toml"
    path.write_text(f'[[hosts]]\nname = "tls-lab"\nengine = "{url}"\n{extra}\n', encoding="utf-8")
    return path


def detect(inv: Path, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, object] | None, str]:
    r = deploykit(
        "fleet", "detect", "--inventory", str(inv), "--dir", str(tmp_path / "fleet"), "--json", env=env, timeout=120
    )
    host = r.json["hosts"][0] if r.out.strip() else None  # type: ignore[index]
    return r.code, host, r.err


def test_fleet_detect_over_tcp_with_tls(tmp_path: Path) -> None:
    url, certs = tls_engine()
    need((certs / "key.pem").is_file(), f"no client TLS material in {certs} (engine-second.sh makes it)")
    shutil.copytree(certs, tmp_path / "certs" / "lab")  # relative to the inventory's folder, as a site keeps it

    # With tls_dir: the engine answers and describes itself.
    code, host, err = detect(inventory(tmp_path, url, 'tls_dir = "certs/lab"'), tmp_path)
    assert code == 0, (host, err)
    assert host is not None and host["state"] == "detected", host
    profile = host["details"]["host"]  # type: ignore[index]
    assert profile["docker"]["reachable"] and profile["docker"]["host"] == url
    assert profile["cpu"]["logical_cores"] >= 1 and profile["memory"]["total_bytes"] > 1 << 30

    # Without it: refused before anything is tried, in one sentence that says why and what to do.
    code, host, err = detect(inventory(tmp_path, url, ""), tmp_path)
    assert code == 4 and host is None
    assert "tcp:// without TLS" in err and "tls = false" in err and "Traceback" not in err
    assert not (tmp_path / "fleet").exists()

    # A client certificate the engine's CA did not sign: that host fails, reported per host, exit 1.
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    shutil.copy(certs / "ca.pem", rogue / "ca.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rogue",
         "-keyout", str(rogue / "key.pem"), "-out", str(rogue / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    code, host, err = detect(inventory(tmp_path, url, 'tls_dir = "rogue"'), tmp_path)
    assert code == 1, err
    assert host is not None and host["state"] in ("unreachable", "failed") and not host["ok"]
    assert "certificate" in str(host["error"]).lower(), host

    # A docker context that uses TLS: its material comes from the docker CLI's context store.
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text("{}", encoding="utf-8")
    lab = tmp_path / "certs" / "lab"
    subprocess.run(
        ["docker", "context", "create", "tls-lab",
         "--docker", f"host={url},ca={lab / 'ca.pem'},cert={lab / 'cert.pem'},key={lab / 'key.pem'}"],
        check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(config)},
    )  # fmt: skip
    (tmp_path / "ctx.toml").write_text('[[hosts]]\nname = "tls-ctx"\ncontext = "tls-lab"\n', encoding="utf-8")
    code, host, err = detect(tmp_path / "ctx.toml", tmp_path, env={"DOCKER_CONFIG": str(config)})
    assert code == 0 and host is not None and host["state"] == "detected", (host, err)
