"""A fleet's customisation in its inventory: [webui_env], templates_dir and override per fleet, group, host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploykit.config.inventory import FleetHost, load_inventory
from deploykit.seams.engine import EngineAddress
from deploykit.values.errors import ConfigError, NotFoundError

ROOM = """
templates_dir = "site-templates"
override = "room.override.yaml"

[webui_env]
WEBUI_NAME = "Room B12"
DEFAULT_LOCALE = "de-DE"

[groups.gpu-room]
override = "gpu.override.yaml"
webui_env = { WEBUI_NAME = "GPU room", ENABLE_SIGNUP = false }

[[hosts]]
name = "lab-01"
engine = "unix:///nonexistent/docker.sock"

[[hosts]]
name = "lab-02"
engine = "ssh://root@lab-02"
group = "gpu-room"
webui_env = { DEFAULT_LOCALE = "fr-FR" }

[[hosts]]
name = "lab-03"
engine = "ssh://root@lab-03"
group = "gpu-room"
override = "/srv/lab-03.yaml"
templates_dir = "~/lab-03-templates"
"""

OVERRIDE = b"services:\n  open-webui:\n    labels:\n      org.example.room: b12   # kept byte for byte\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "room.toml"
    path.write_text(text, encoding="utf-8")
    return path


def host(inventory_path: Path, name: str) -> FleetHost:
    return next(h for h in load_inventory(inventory_path).hosts if h.name == name)


def test_layers_merge_fleet_then_group_then_host(tmp_path: Path) -> None:
    path = write(tmp_path, ROOM)
    one, two, three = load_inventory(path).hosts
    assert one.webui_env == {"WEBUI_NAME": "Room B12", "DEFAULT_LOCALE": "de-DE"}
    assert one.override == str(tmp_path / "room.override.yaml")
    assert one.templates_dir == str(tmp_path / "site-templates")
    # The group's table merges over the fleet's; the host's over both; TOML's false is the string Open WebUI reads.
    assert two.webui_env == {"WEBUI_NAME": "GPU room", "DEFAULT_LOCALE": "fr-FR", "ENABLE_SIGNUP": "false"}
    assert two.override == str(tmp_path / "gpu.override.yaml")
    assert three.override == "/srv/lab-03.yaml"
    assert three.templates_dir == str(Path("~/lab-03-templates").expanduser())


def test_an_inventory_without_customisation_loads_as_before(tmp_path: Path) -> None:
    (only,) = load_inventory(write(tmp_path, '[[hosts]]\nname = "a"\nengine = "ssh://a"\n')).hosts
    assert (only.webui_env, only.templates_dir, only.override, only.site_override()) == ({}, None, None, None)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (ROOM.replace('group = "gpu-room"\nwebui_env', 'group = "gpu"\nwebui_env'), "hosts[1].group: no [groups.gpu]"),
        (ROOM.replace('override = "gpu.override.yaml"', 'overide = "x"'), "groups.gpu-room.overide: Extra inputs"),
        (ROOM.replace('DEFAULT_LOCALE = "fr-FR"', 'OPENAI_API_KEY = "x"'), "which deploykit sets itself"),
        (ROOM.replace('DEFAULT_LOCALE = "de-DE"', '"bad name" = "x"'), "is not an environment variable name"),
        (ROOM.replace('templates_dir = "site-templates"', "templates_dir = 3"), "templates_dir: Input should be"),
    ],
)
def test_bad_customisation_is_refused_with_its_line(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, text))
    assert says in err.value.message
    assert " line " in err.value.message


def test_the_line_is_the_one_that_says_it(tmp_path: Path) -> None:
    text = ROOM.replace('override = "gpu.override.yaml"', 'overide = "x"')
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, text))
    line = text.splitlines().index('overide = "x"') + 1
    assert f"line {line}:" in err.value.message
    text = ROOM.replace('DEFAULT_LOCALE = "fr-FR"', 'OPENAI_API_KEY = "x"')
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, text))
    line = text.splitlines().index('webui_env = { OPENAI_API_KEY = "x" }') + 1
    assert f"line {line}:" in err.value.message


def test_a_missing_override_names_the_inventory_line_and_the_host(tmp_path: Path) -> None:
    path = write(tmp_path, ROOM)
    with pytest.raises(NotFoundError) as err:
        host(path, "lab-02").site_override()
    line = ROOM.splitlines().index('override = "gpu.override.yaml"') + 1
    assert f"{path} line {line} names override {tmp_path / 'gpu.override.yaml'} for lab-02" in err.value.message
    (tmp_path / "gpu.override.yaml").write_text("services: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        host(path, "lab-02").site_override()


def fleet_render(tmp_path: Path, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """`fleet render` through the app, with the engine calls replaced by the built-in cpu profile."""
    from deploykit.app.fleet import FleetRequest, fleet_plan, summary
    from deploykit.catalog import builtin_profiles, find_profile
    from deploykit.config.settings import Settings

    cpu = find_profile("cpu", builtin_profiles())
    nowhere = EngineAddress("unix:///nonexistent/docker.sock")
    monkeypatch.setattr("deploykit.app.fleet._reach", lambda host: (nowhere, None))
    monkeypatch.setattr("deploykit.app.fleet.detect_fleet_host", lambda *args, **kwargs: cpu)
    settings = Settings(model_cache=tmp_path / "cache", webui_env={"WEBUI_NAME": "controller", "ENABLE_SIGNUP": "true"})
    req = FleetRequest(inventory, "lab-01", 1, tmp_path / "fleet")
    return summary(fleet_plan(settings, req, write=True))


def test_fleet_render_writes_the_hosts_settings_and_its_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = write(tmp_path, ROOM.replace('templates_dir = "site-templates"\n', ""))
    (tmp_path / "room.override.yaml").write_bytes(OVERRIDE)
    result = fleet_render(tmp_path, inventory, monkeypatch)
    assert result["ok"], result
    stack = tmp_path / "fleet" / "lab-01"
    assert (stack / "compose.override.yaml").read_bytes() == OVERRIDE
    env = yaml.safe_load((stack / "compose.yaml").read_text())["services"]["open-webui"]["environment"]
    # The inventory's [webui_env] over the controller's config.
    assert (env["WEBUI_NAME"], env["DEFAULT_LOCALE"], env["ENABLE_SIGNUP"]) == ("Room B12", "de-DE", "true")
    recorded = json.loads((stack / "plan.json").read_text())["customised"]["override"]
    row = result["hosts"][0]  # type: ignore[index]
    assert row["details"]["override"]["sha256"] == recorded["sha256"]
    assert row["details"]["override"]["from"] == str(tmp_path / "room.override.yaml")
    # Re-rendering converges: nothing changes.
    again = fleet_render(tmp_path, inventory, monkeypatch)
    assert again["hosts"][0]["details"]["changed"] == []  # type: ignore[index]


def test_fleet_render_uses_the_inventorys_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploykit.running.customise import export_templates

    inventory = write(tmp_path, ROOM.replace('override = "room.override.yaml"\n', ""))
    export_templates(tmp_path / "site-templates", force=False)
    env_template = tmp_path / "site-templates" / "env.j2"
    env_template.write_text("# room b12\n" + env_template.read_text(encoding="utf-8"), encoding="utf-8")
    result = fleet_render(tmp_path, inventory, monkeypatch)
    assert result["ok"], result
    stack = tmp_path / "fleet" / "lab-01"
    assert (stack / ".env").read_text().startswith("# room b12\n")
    assert not (stack / "compose.override.yaml").exists()
    assert json.loads((stack / "plan.json").read_text())["customised"]["templates"]["dir"] == str(
        tmp_path / "site-templates"
    )


def test_fleet_render_of_a_missing_override_fails_that_host_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = write(tmp_path, ROOM.replace('templates_dir = "site-templates"\n', ""))
    result = fleet_render(tmp_path, inventory, monkeypatch)
    row = result["hosts"][0]  # type: ignore[index]
    assert row["state"] == "failed" and "room.toml line 2 names override" in row["error"]
    assert not (tmp_path / "fleet" / "lab-01").exists()


SEVERAL = """
[[models]]
id = "smollm2-135m-instruct"

[groups.gpu-room]

[[groups.gpu-room.models]]
id = "qwen2.5-1.5b-instruct"
context = 2048

[[hosts]]
name = "lab-01"
engine = "unix:///nonexistent/docker.sock"

[[hosts.models]]
id = "smollm2-135m-instruct"

[[hosts.models]]
id = "qwen2.5-1.5b-instruct"

[[hosts]]
name = "lab-02"
engine = "ssh://root@lab-02"
group = "gpu-room"

[[hosts]]
name = "lab-03"
engine = "ssh://root@lab-03"
"""


def test_models_are_layered_the_nearest_list_winning_whole(tmp_path: Path) -> None:
    one, two, three = load_inventory(write(tmp_path, SEVERAL)).hosts
    assert [m.id for m in one.models or ()] == ["smollm2-135m-instruct", "qwen2.5-1.5b-instruct"]
    assert [(m.id, m.context) for m in two.models or ()] == [("qwen2.5-1.5b-instruct", 2048)]
    assert [m.id for m in three.models or ()] == ["smollm2-135m-instruct"], "the fleet's list"


def test_a_models_entry_with_an_unknown_backend_names_its_line(tmp_path: Path) -> None:
    text = SEVERAL.replace('[[hosts.models]]\nid = "qwen2.5-1.5b-instruct"\n',
                           '[[hosts.models]]\nid = "qwen2.5-1.5b-instruct"\nbackend = "ollama"\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"hosts\[0\]\.models\[1\]\.backend: Input should be"):
        load_inventory(write(tmp_path, text))


def test_fleet_render_gives_a_host_its_own_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = fleet_render(tmp_path, write(tmp_path, SEVERAL), monkeypatch)
    assert result["ok"], result
    services = yaml.safe_load((tmp_path / "fleet" / "lab-01" / "compose.yaml").read_text())["services"]
    assert set(services) == {"router", "open-webui"}
    assert (tmp_path / "fleet" / "lab-01" / "models.ini").is_file()
