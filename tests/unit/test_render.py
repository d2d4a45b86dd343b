"""The renderer: reference stacks current, quoting safe, files deterministic, secrets kept."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from deploykit.app.stack import reference_stack
from deploykit.catalog import builtin_profiles
from deploykit.planning.render import env_quote, yaml_quote
from deploykit.seams.stackdir import read_secrets
from deploykit.values.errors import UsageError
from deploykit.values.stackfiles import ADMIN_EMAIL, SECRET_KEYS, STACK_FILES
from tests.unit.conftest import ROOT, compose_config, render

HOSTILE = [
    "/models/my model.gguf",
    '/models/it\'s "quoted".gguf',
    "/models/a:b:ro.gguf",
    "/models/$HOME/${INJECT:-x}.gguf",
    "/models/new\nline: injected\n- evil.gguf",
    "/models/#not-a-comment &anchor *alias {flow: [x]}.gguf",
    "/models/ünïcødé 😀 \u2028 sep.gguf",
    "/models/back\\slash\t tab.gguf",
]


@pytest.mark.parametrize("profile", [p.name for p in builtin_profiles()])
def test_reference_stacks_are_current(profile: str) -> None:
    for name, text in reference_stack(profile).items():
        path = ROOT / "compose" / profile / name
        assert path.is_file(), f"{path} missing: run `make reference`"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `make reference` and review the diff"


@pytest.mark.parametrize("value", HOSTILE)
def test_yaml_quote_round_trips_hostile_values(value: str) -> None:
    loaded = yaml.safe_load(f"key: {yaml_quote(value)}\n")
    assert loaded == {"key": value.replace("$", "$$")}


def test_env_quote_refuses_what_dotenv_cannot_hold() -> None:
    assert env_quote("abc$def") == "'abc$def'"
    with pytest.raises(UsageError):
        env_quote("it's")


def test_render_writes_three_files_env_private(tmp_path: Path) -> None:
    result = render(tmp_path)
    assert sorted(p.name for p in result.stack_dir.iterdir()) == sorted(STACK_FILES)
    assert stat.S_IMODE((result.stack_dir / ".env").stat().st_mode) == 0o600
    compose = yaml.safe_load((result.stack_dir / "compose.yaml").read_text())
    webui = compose["services"]["open-webui"]
    assert webui["ports"] == ["0.0.0.0:7860:8080"]
    assert webui["environment"]["OPENAI_API_BASE_URL"] == "http://inference:8000/v1"
    assert not webui["environment"]["OPENAI_API_BASE_URL"].endswith("/")
    # started beside the server, not after its healthcheck (Open WebUI lists models on demand)
    assert "depends_on" not in webui  # started beside the inference server, not after it
    inference = compose["services"]["inference"]
    assert all(p.startswith("127.0.0.1:") for p in inference["ports"])
    assert inference["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "--reasoning-parser" in inference["command"]
    plan = json.loads((result.stack_dir / "plan.json").read_text())
    assert plan["stack"]["plan"]["backend"] == "vllm"


def test_rerender_is_byte_identical_and_keeps_secrets(tmp_path: Path) -> None:
    first = render(tmp_path)
    before = {n: (first.stack_dir / n).read_bytes() for n in STACK_FILES}
    second = render(tmp_path)
    assert second.changed == []
    assert {n: (second.stack_dir / n).read_bytes() for n in STACK_FILES} == before


def test_secrets_differ_between_stacks(tmp_path: Path) -> None:
    """Every generated secret is the stack's own, not only its id; the admin's email is the setting's."""
    a = read_secrets(render(tmp_path, "a").stack_dir)
    b = read_secrets(render(tmp_path, "b").stack_dir)
    assert set(a) == set(b) == set(SECRET_KEYS)
    generated = [key for key in SECRET_KEYS if key != ADMIN_EMAIL]
    assert [key for key in generated if a[key] == b[key]] == []
    assert a[ADMIN_EMAIL] == b[ADMIN_EMAIL]
    assert all(len(a[key]) >= 16 for key in generated)


def test_refuses_a_directory_that_is_not_a_stack(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError):
        render(tmp_path, "precious")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_model_path_reaches_compose_exactly(tmp_path: Path, hostile: str) -> None:
    # A real GGUF header under a hostile file name: the path must come out of `docker compose config` intact.
    gguf = ROOT / "tests" / "fixtures" / "gguf" / "tiny.gguf"
    folder = tmp_path / "models" / Path(hostile).parent.relative_to("/models")
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / Path(hostile).name
    shutil.copy(gguf, model)
    result = render(tmp_path, profile="cpu", model_path=model)
    compose = yaml.safe_load((result.stack_dir / "compose.yaml").read_text())
    volume = compose["services"]["inference"]["volumes"][0]
    assert volume["source"].replace("$$", "$") == str(model.parent)
    assert compose["services"]["inference"]["command"][1].replace("$$", "$") == f"/models/{model.name}"
    resolved = compose_config(result.stack_dir)["services"]["inference"]
    # compose prints its normalised file, where a literal "$" is written "$$" again.
    assert resolved["volumes"][0]["source"].replace("$$", "$") == str(model.parent)
    assert resolved["command"][1].replace("$$", "$") == f"/models/{model.name}"


def test_rendered_stack_passes_compose_config(tmp_path: Path) -> None:
    result = render(tmp_path)
    resolved = compose_config(result.stack_dir)
    ports = resolved["services"]["inference"]["ports"]
    assert all(p["host_ip"] == "127.0.0.1" for p in ports)
    assert resolved["services"]["open-webui"]["ports"][0]["published"] == "7860"
