"""A site's customisation without an engine: [webui_env], the override file, and site templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.seams.compose import Stack
from deploykit.seams.override import check_syntax, merge_error
from deploykit.seams.proc import Completed
from deploykit.values import webui_env
from deploykit.values.errors import ConfigError
from tests.unit.conftest import compose_config

RENDER = ("render", "--profile", "cpu", "--model", "smollm2-135m-instruct")


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    result.flat = " ".join(result.output.split())  # the console wraps long notes
    return result


def config_file(home: Path, text: str) -> Path:
    path = home / "site.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- [webui_env]


def test_webui_env_from_the_config_file_reaches_open_webui(tmp_path: Path, isolated_home: Path) -> None:
    config = config_file(isolated_home, '[webui_env]\nWEBUI_NAME = "Physics Lab: $HOME"\nENABLE_SIGNUP = false\n')
    result = run(*RENDER, "--dir", str(tmp_path / "s"), env={"DEPLOYKIT_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    env = compose_config(tmp_path / "s")["services"]["open-webui"]["environment"]
    # compose prints its normalised file with a literal "$" written "$$": not interpolated
    assert env["WEBUI_NAME"] == "Physics Lab: $$HOME"
    assert env["ENABLE_SIGNUP"] == "false"
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["stack"]["webui_env"] == {"ENABLE_SIGNUP": "false", "WEBUI_NAME": "Physics Lab: $HOME"}


def test_webui_env_from_the_environment_is_upper_cased(tmp_path: Path) -> None:
    result = run(*RENDER, "--dir", str(tmp_path / "s"), env={"DEPLOYKIT_WEBUI_ENV__DEFAULT_LOCALE": "de-DE"})
    assert result.exit_code == 0, result.output
    env = compose_config(tmp_path / "s")["services"]["open-webui"]["environment"]
    assert env["DEFAULT_LOCALE"] == "de-DE"


def test_unknown_webui_env_name_warns_and_reserved_refuses(tmp_path: Path, isolated_home: Path) -> None:
    config = config_file(isolated_home, '[webui_env]\nWEBUI_NAM = "x"\n')
    result = run(*RENDER, "--dir", str(tmp_path / "s"), env={"DEPLOYKIT_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert "WEBUI_NAM is not a setting Open WebUI 0.12.4 reads (did you mean WEBUI_NAME?)" in result.flat
    config.write_text('[webui_env]\nOPENAI_API_BASE_URL = "http://elsewhere/v1"\n')
    refused = run(*RENDER, "--dir", str(tmp_path / "t"), env={"DEPLOYKIT_CONFIG": str(config)})
    assert refused.exit_code == 4
    assert "deploykit sets itself" in refused.flat
    assert not (tmp_path / "t").exists()


def test_the_catalog_knows_the_pinned_names() -> None:
    known = webui_env.catalog()
    assert known.open_webui_version == "0.12.4"
    assert {"WEBUI_NAME", "DEFAULT_LOCALE", "ENABLE_LDAP", "OAUTH_CLIENT_ID"} <= known.names
    assert known.stored["DEFAULT_LOCALE"] == "ui.default_locale"
    assert "WEBUI_NAME" not in known.stored  # read from the environment on every start
    assert webui_env.stored_settings({"WEBUI_NAME": "x", "RESPONSE_WATERMARK": "y"}) == {"ui.watermark": "y"}


@pytest.mark.parametrize(
    ("text", "current", "expected"),
    [
        ("False", True, False),
        ("true", False, True),
        ("8", 3, 8),
        ("0.5", 0.1, 0.5),
        ("a;b", [], ["a", "b"]),
        ("a, b", ["x"], ["a", "b"]),
        ('{"k": 1}', {}, {"k": 1}),
        ("plain", "", "plain"),
        ("plain", None, "plain"),
    ],
)
def test_values_take_the_type_open_webui_stores(text: str, current: object, expected: object) -> None:
    assert webui_env.typed(text, current) == expected


# ---------------------------------------------------------------- compose.override.yaml


def test_every_compose_command_names_the_override(tmp_path: Path) -> None:
    stack = Stack(tmp_path, "deploykit-x")
    assert stack.compose_command("ps").count("-f") == 1
    (tmp_path / "compose.override.yaml").write_text("services: {}\n")
    command = stack.compose_command("ps")
    assert command[command.index("-f") : command.index("-p")] == [
        "-f", str(tmp_path / "compose.yaml"), "-f", str(tmp_path / "compose.override.yaml"),
    ]  # fmt: skip
    assert str(tmp_path / "compose.override.yaml") in stack.logs_command("open-webui", 10, False)


def test_render_never_touches_the_override_and_plan_json_records_it(tmp_path: Path) -> None:
    stack_dir = tmp_path / "s"
    stack_dir.mkdir()
    override = "services:\n  open-webui:\n    environment:\n      WEBUI_NAME: Lab\n"
    (stack_dir / "compose.override.yaml").write_text(override)  # before the first render: allowed
    for _ in range(2):
        assert run(*RENDER, "--dir", str(stack_dir)).exit_code == 0
    assert (stack_dir / "compose.override.yaml").read_text() == override
    plan = json.loads((stack_dir / "plan.json").read_text())
    assert plan["customised"]["override"]["file"] == "compose.override.yaml"


def test_override_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "compose.override.yaml"
    path.write_text("services:\n  open-webui:\n    environment:\n      A: b\n     bad: [\n")
    with pytest.raises(ConfigError, match=r"compose.override.yaml line 5: not valid YAML"):
        check_syntax(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        check_syntax(path)


def test_merge_error_names_the_override_line(tmp_path: Path) -> None:
    path = tmp_path / "compose.override.yaml"
    path.write_text("# site\nservices:\n  open-webui:\n    image: x:1\n    ports: '8080'\n")
    error = merge_error(path, "cannot override services.open-webui.ports\n", ["inference", "open-webui"])
    assert str(error).startswith(f"{path} line 5 does not merge with compose.yaml: cannot override")
    path.write_text("services:\n  openwebui:\n    environment: {A: b}\n")
    error = merge_error(
        path, 'service "openwebui" has neither an image nor a build context specified', ["inference", "open-webui"]
    )
    assert "line 2" in str(error)
    assert error.hint is not None and "inference, open-webui" in error.hint


def test_check_override_runs_compose_config_on_both_files(tmp_path: Path) -> None:
    (tmp_path / "compose.override.yaml").write_text("services:\n  open-webui:\n    ports: '8080'\n")
    seen: list[list[str]] = []

    def runner(args, timeout=None, env=None):  # type: ignore[no-untyped-def]
        seen.append(list(args))
        assert yaml.safe_load(Path(args[args.index("-f") + 1]).read_text()) == {"services": {}}
        return Completed(list(args), 15, "", "cannot override services.open-webui.ports")

    with pytest.raises(ConfigError, match="line 3 does not merge"):
        Stack(tmp_path, "deploykit-x", runner=runner).check_override({"compose.yaml": "services: {}\n", ".env": ""})
    assert seen[0][:4] == ["docker", "compose", "--env-file", seen[0][3]]
    assert "config" in seen[0]
    assert not (tmp_path / "compose.yaml").exists()  # checked from a scratch copy, nothing written


# ---------------------------------------------------------------- site templates


def test_templates_export_shadow_and_changed_builtin(tmp_path: Path, isolated_home: Path) -> None:
    site = tmp_path / "site-templates"
    exported = run("templates", "export", str(site))
    assert exported.exit_code == 0, exported.output
    assert (site / "compose.yaml.j2").is_file() and (site / "services" / "llamacpp.yaml.j2").is_file()
    assert run("templates", "export", str(site)).exit_code == 2  # never overwrites a site's copies
    for copy in site.rglob("*.j2"):
        if copy.name != "compose.yaml.j2":
            copy.unlink()
    compose = site / "compose.yaml.j2"
    compose.write_text(compose.read_text().replace("restart: unless-stopped", "restart: always"))
    config = config_file(isolated_home, f'templates_dir = "{site}"\n')
    env = {"DEPLOYKIT_CONFIG": str(config)}
    result = run(*RENDER, "--dir", str(tmp_path / "s"), env=env)
    assert result.exit_code == 0, result.output
    assert compose_config(tmp_path / "s")["services"]["open-webui"]["restart"] == "always"
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert list(plan["customised"]["templates"]["shadowed"]) == ["compose.yaml.j2"]
    assert "changed since" not in result.flat
    # A later deploykit's built-in differs from the one the copy was made from: render says so, every time.
    manifest = site / "deploykit-templates.json"
    data = json.loads(manifest.read_text())
    data["templates"]["compose.yaml.j2"]["builtin_sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    for _ in range(2):
        again = run(*RENDER, "--dir", str(tmp_path / "s"), env=env)
        assert "the built-in template compose.yaml.j2 changed since your copy" in again.flat
    assert run("templates", "rebase", str(site)).exit_code == 0
    assert "changed since" not in run(*RENDER, "--dir", str(tmp_path / "s"), env=env).flat


def test_a_broken_site_template_is_one_sentence(tmp_path: Path, isolated_home: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "compose.yaml.j2").write_text("name: {{ project | q }}\n{% if %}\n")
    config = config_file(isolated_home, f'templates_dir = "{site}"\n')
    result = run(*RENDER, "--dir", str(tmp_path / "s"), env={"DEPLOYKIT_CONFIG": str(config)})
    assert result.exit_code == 2
    assert "line 2" in result.flat and "do not render" in result.flat
    assert not (tmp_path / "s").exists()
    missing = config_file(isolated_home, f'templates_dir = "{tmp_path / "nope"}"\n')
    assert run(*RENDER, "--dir", str(tmp_path / "s"), env={"DEPLOYKIT_CONFIG": str(missing)}).exit_code == 3


def test_apply_stored_writes_only_what_differs_typed_like_open_webui() -> None:
    import httpx

    from deploykit.seams.webui import apply_stored

    stored = {"ui.watermark": "old", "ui.enable_message_rating": True, "ui.default_locale": "de-DE"}
    posted: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/configs/export":
            return httpx.Response(200, json=stored)
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={})

    with httpx.Client(base_url="http://ui", transport=httpx.MockTransport(handler)) as client:
        wanted = {"ui.watermark": "new", "ui.enable_message_rating": "false", "ui.default_locale": "de-DE"}
        notes = apply_stored(client, wanted)
    assert posted == [{"config": {"ui.watermark": "new", "ui.enable_message_rating": False}}]
    assert notes == ["applied 2 stored Open WebUI setting(s): ui.enable_message_rating, ui.watermark"]


def test_up_on_an_existing_stack_renders_todays_webui_env(tmp_path: Path, isolated_home: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from deploykit.app.stack import reprepare_stack
    from deploykit.config.settings import load_settings

    config = config_file(isolated_home, '[webui_env]\nRESPONSE_WATERMARK = "A"\n')
    monkeypatch.setenv("DEPLOYKIT_CONFIG", str(config))
    assert run(*RENDER, "--dir", str(tmp_path / "s")).exit_code == 0
    config.write_text('[webui_env]\nRESPONSE_WATERMARK = "B"\n')
    prepared = reprepare_stack(load_settings(), tmp_path / "s")
    assert prepared.spec.webui_env == {"RESPONSE_WATERMARK": "B"}
    assert '"RESPONSE_WATERMARK": "B"' in prepared.files["compose.yaml"]
    assert prepared.secrets == app_secrets(tmp_path / "s")  # the stack's secrets, never new ones


def app_secrets(stack_dir: Path) -> dict[str, str]:
    from deploykit.seams.stackdir import read_secrets

    return read_secrets(stack_dir)
