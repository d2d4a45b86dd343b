"""A site's customisation on a real engine: compose.override.yaml, [webui_env] and what survives render/down/up.

One llama.cpp stack (ports 24860/24861). Its directory holds a compose.override.yaml before the first render;
its settings come from a config file named by DEPLOYKIT_CONFIG, as a site's would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import GGUF, MODEL_ID, Stack, deploykit, docker, make_stack

pytestmark = pytest.mark.e2e

OVERRIDE = """\
# The lab's own changes: deploykit never writes or deletes this file.
services:
  open-webui:
    environment:
      WEBUI_NAME: "Physics Lab"
"""
# ports is a list in compose.yaml: a string cannot be merged onto it.
BROKEN_OVERRIDE = """\
services:
  open-webui:
    ports: "8080"
"""


def write_config(path: Path, watermark: str) -> None:
    path.write_text(f'[webui_env]\nRESPONSE_WATERMARK = "{watermark}"\nENABLE_MESSAGE_RATING = false\n')


def webui_config(stack: Stack) -> dict[str, object]:
    """Open WebUI's /api/config as the stack's admin (its features carry the settings it keeps in its database)."""
    env = dict(line.split("=", 1) for line in (stack.dir / ".env").read_text().splitlines() if "=" in line)
    creds = {"email": env["DEPLOYKIT_ADMIN_EMAIL"].strip("'"), "password": env["DEPLOYKIT_ADMIN_PASSWORD"].strip("'")}
    base = f"http://127.0.0.1:{stack.webui_port}"
    token = httpx.post(f"{base}/api/v1/auths/signin", json=creds, timeout=30).json()["token"]
    r = httpx.get(f"{base}/api/config", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return dict(r.json())


def webui_container(stack: Stack) -> str:
    return docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}",
        "--filter", "label=com.docker.compose.service=open-webui",
    ).strip()  # fmt: skip


@pytest.fixture(scope="module")
def site_stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("customise")
    stack = make_stack(tmp, "e2e-overrides", 24860, 24861)
    stack.env["DEPLOYKIT_CONFIG"] = str(tmp / "config.toml")
    write_config(tmp / "config.toml", "Lab A")
    stack.dir.mkdir()
    (stack.dir / "compose.override.yaml").write_text(OVERRIDE)
    from tests.e2e.conftest import remove_by_label

    remove_by_label(f"org.deploykit.stack={stack.project}")
    stack.up_result = stack.up(engine, "--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF), "--json")
    yield stack
    stack.remove()


def test_override_and_webui_env_apply_on_first_up(site_stack: Stack) -> None:
    result = site_stack.up_result
    assert result is not None and result.code == 0, result and result.err
    assert "Using compose.override.yaml" in result.err
    config = webui_config(site_stack)
    assert config["name"] == "Physics Lab (Open WebUI)"  # Open WebUI appends its own name to a custom one
    features, ui = config["features"], config["ui"]
    assert isinstance(features, dict) and isinstance(ui, dict)
    assert ui["response_watermark"] == "Lab A"
    assert features["enable_message_rating"] is False
    state = deploykit("status", "--dir", str(site_stack.dir), "--json", env=site_stack.env)
    assert state.code == 0, state.err
    assert json.loads(state.out)["override"]["file"] == "compose.override.yaml"
    plan = json.loads((site_stack.dir / "plan.json").read_text())
    assert plan["customised"]["override"]["file"] == "compose.override.yaml"
    assert plan["stack"]["webui_env"] == {"ENABLE_MESSAGE_RATING": "false", "RESPONSE_WATERMARK": "Lab A"}


def test_render_keeps_the_override_and_a_changed_setting_lands_on_the_next_up(
    site_stack: Stack, engine: dict[str, str]
) -> None:
    args = ("--profile", "cpu", "--model", MODEL_ID, "--model-file", str(GGUF))
    images = ("--image", f"inference={engine['LLAMACPP_IMAGE']}", "--image", f"open-webui={engine['OPENWEBUI_IMAGE']}")
    rendered = deploykit("render", *args, *images, "--dir", str(site_stack.dir), env=site_stack.env)
    assert rendered.code == 0, rendered.err
    assert (site_stack.dir / "compose.override.yaml").read_text() == OVERRIDE
    # A value Open WebUI keeps in its database after the first start: the next up must still change it.
    write_config(Path(site_stack.env["DEPLOYKIT_CONFIG"]), "Lab B")
    down = deploykit("down", "--dir", str(site_stack.dir), env=site_stack.env)
    assert down.code == 0, down.err
    again = deploykit("up", "--dir", str(site_stack.dir), "--json", env=site_stack.env, timeout=1200)
    assert again.code == 0, again.err
    config = webui_config(site_stack)
    assert config["name"] == "Physics Lab (Open WebUI)"
    assert config["ui"]["response_watermark"] == "Lab B"  # type: ignore[index]
    assert any("ui.watermark" in note for note in json.loads(again.out)["notes"])
    # An upgrade re-renders with (here: the same local) images: the override and the setting stay in effect.
    upgraded = deploykit("upgrade", *images, "--dir", str(site_stack.dir), "--json", env=site_stack.env, timeout=1200)
    assert upgraded.code == 0, upgraded.err
    assert json.loads(upgraded.out)["backup"]  # taken first and kept
    assert (site_stack.dir / "compose.override.yaml").read_text() == OVERRIDE
    config = webui_config(site_stack)
    assert config["name"] == "Physics Lab (Open WebUI)"
    assert config["ui"]["response_watermark"] == "Lab B"  # type: ignore[index]


def test_an_override_that_does_not_merge_is_refused_before_anything_starts(site_stack: Stack) -> None:
    before = webui_container(site_stack)
    compose_before = (site_stack.dir / "compose.yaml").read_text()
    (site_stack.dir / "compose.override.yaml").write_text(BROKEN_OVERRIDE)
    try:
        refused = deploykit("up", "--dir", str(site_stack.dir), env=site_stack.env)
        assert refused.code == 4, refused.err
        assert "compose.override.yaml line 3 does not merge" in refused.err
        assert "ports" in refused.err
        assert webui_container(site_stack) == before  # not recreated, not stopped
        assert (site_stack.dir / "compose.yaml").read_text() == compose_before
    finally:
        (site_stack.dir / "compose.override.yaml").write_text(OVERRIDE)
