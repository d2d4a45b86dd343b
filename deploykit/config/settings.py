"""Settings: defaults < config file < the stack's deploykit.toml < ``DEPLOYKIT_*`` environment < flags.

The config file is TOML at ``$XDG_CONFIG_HOME/deploykit/config.toml`` (or ``DEPLOYKIT_CONFIG``). A stack
directory may hold ``deploykit.toml`` in the same shape: settings for that stack only (``deploykit tune``
writes its measured winner there, so a later render or up keeps it).
Nested values use ``__`` in the environment: ``DEPLOYKIT_IMAGES__OPEN_WEBUI=mirror/open-webui:v0.12.4``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from deploykit.backends import BACKENDS, named
from deploykit.values.errors import ConfigError, UsageError
from deploykit.values.paths import config_dir, model_cache
from deploykit.values.plan import FINITE, WHOLE, PlanKnobs, PlanSettings
from deploykit.values.services import SERVICES, TLS_PROXY
from deploykit.values.stackplan import MAX_MODELS, ModelChoice
from deploykit.values.tls import parse_choice
from deploykit.values.versions import pinned
from deploykit.values.webui_env import WebuiEnv

DEFAULT_MODEL = "deepseek-r1-distill-qwen-1.5b"
STACK_SETTINGS_FILE = "deploykit.toml"
# The stack file the settings being built read; a context variable because pydantic-settings asks the
# class, not the instance, for its sources.
_stack_file: ContextVar[Path | None] = ContextVar("deploykit_stack_file", default=None)
IMAGE_REF = r"^[a-z0-9][a-z0-9._/:@-]*$"


def config_file() -> Path:
    return Path(os.environ.get("DEPLOYKIT_CONFIG") or config_dir() / "config.toml")


WholeNumber = Annotated[int, WHOLE]
FiniteFloat = Annotated[float, FINITE]


def check_image_ref(ref: str) -> str:
    """The one rule for image references, wherever they come from: the reference syntax, and pinned."""
    if not re.fullmatch(IMAGE_REF, ref):
        raise ValueError(f"'{ref[:80]}' is not an image reference (lowercase name[:tag] or name@sha256:…)")
    return check_pinned(ref)


def check_pinned(ref: str) -> str:
    """Images must name a version: a tag other than latest/main, or a digest."""
    name = ref.rsplit("/", 1)[-1]
    if "@sha256:" in ref:
        return ref
    if ":" not in name:
        raise ValueError(f"'{ref}' has no tag; pin a version such as {ref}:v1.2.3")
    tag = name.rsplit(":", 1)[1]
    if tag in {"latest", "main", "dev", "nightly"}:
        raise ValueError(f"'{ref}' uses the moving tag '{tag}'; pin a released version")
    return ref


class ImagesBase(BaseModel):
    """Container images, pinned. Air-gapped teams point these at their own mirror."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Defaults come from deploykit/catalog/versions.toml, the one place that names each version; every value
    # is checked by check_image_ref below: the same rule, and the same words, as --image.
    open_webui: str = pinned().open_webui
    caddy: str = pinned().get("caddy", "image")  # the HTTPS proxy of stacks rendered with --tls

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return check_image_ref(value)

    def ref(self, key: str) -> str:
        """The image under ``key``: open_webui, or a key a backend names (``Backend.images``)."""
        return str(getattr(self, key))


# Each backend's images, under the keys it names (llama_server, llama_server_cuda, vllm, vllm_cpu), beside
# Open WebUI's: the fields come from the registry, so a new backend brings its own.
_BACKEND_IMAGES: dict[str, Any] = {
    image.key: (str, image.default) for backend in BACKENDS for image in backend.images(pinned()).values()
}
if TYPE_CHECKING:
    from tomlkit import TOMLDocument

    Images = ImagesBase
else:
    Images = create_model("Images", __base__=ImagesBase, __doc__=ImagesBase.__doc__, **_BACKEND_IMAGES)


class Settings(BaseSettings, PlanKnobs):
    model_config = SettingsConfigDict(
        env_prefix="DEPLOYKIT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    model: str = DEFAULT_MODEL
    # The planner's knobs are PlanKnobs' fields (deploykit.values.plan), declared there once.
    model_cache: Path = Field(default_factory=model_cache)
    profiles_file: Path | None = None
    webui_port: WholeNumber = Field(7860, ge=1, le=65535)
    webui_bind: str = "0.0.0.0"
    inference_port: WholeNumber = Field(7861, ge=1, le=65535)
    # No quotes, spaces, $ or control characters: the e-mail is written into .env and sent to Open WebUI.
    admin_email: str = Field(
        "admin@deploykit.local",
        pattern=r"^[^@\s'$\\\"\x00-\x1f\x7f]+@[^@\s'$\\\"\x00-\x1f\x7f]+\.[^@\s'$\\\"\x00-\x1f\x7f]+$",
    )
    docker_host: str | None = Field(None, pattern=r"^(unix|tcp|ssh|npipe|http|https)://[^\s\x00-\x1f\x7f]+$")
    images: Images = Images()
    # Open WebUI environment settings (``[webui_env]`` in the config file), checked against the pinned
    # version's names by deploykit.values.webui_env; values arrive as strings, as in any environment.
    webui_env: WebuiEnv = Field(default_factory=dict)
    # A site's own templates: files here shadow the built-in ones of the same relative name.
    templates_dir: Path | None = None
    # HTTPS in front of Open WebUI: "internal" (the site CA), "CERT,KEY" (PEM files) or "off"; unset, a stack
    # keeps what it was rendered with (new stacks: off). Its words checked here, its files at render.
    tls: str | None = None
    # A stack of several models ([[models]] tables, or --model given more than once): the first is the default.
    # Empty: the one model of `model` (or --model / --model-file), exactly as before.
    models: tuple[ModelChoice, ...] = Field(default=(), max_length=MAX_MODELS)

    @field_validator("models")
    @classmethod
    def _models(cls, value: tuple[ModelChoice, ...]) -> tuple[ModelChoice, ...]:
        for i, choice in enumerate(value):
            if choice.id is None and choice.file is None:
                raise ValueError(f"entry {i + 1} names neither an id nor a file")
            if (wanted := choice.backend) is not None:
                named(wanted)  # a ValueError saying the names deploykit knows
        return value

    @field_validator("tls")
    @classmethod
    def _tls_choice(cls, value: str | None) -> str | None:
        if value is not None:
            parse_choice(value)
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None:
            named(value)  # a ValueError saying the names deploykit knows
        return value

    @field_validator("webui_bind")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("must be an IPv4 address such as 0.0.0.0 (every interface) or 127.0.0.1") from None
        return value

    @field_validator("model_cache")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_absolute():
            raise ValueError("must be an absolute path (compose would resolve it against the stack folder)")
        try:
            not_a_folder = value.exists() and not value.is_dir()
        except OSError:
            not_a_folder = False  # unreadable: the download or preflight says why, with the path
        if not_a_folder:
            raise ValueError(f"{value} is a file, not a folder (the model cache holds the downloaded models)")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.webui_port == self.inference_port:
            raise ValueError(f"webui_port and inference_port are both {self.webui_port}; they must differ")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags, then environment, then the stack's file, then the config file, then defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        stack_file = _stack_file.get()
        if stack_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, stack_file))
        sources.append(TomlConfigSettingsSource(settings_cls, config_file()))
        return tuple(sources)

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(**{name: getattr(self, name) for name in PlanKnobs.model_fields})


# The command-line flag that sets a field, where its name differs from --FIELD or it has one.
FLAGS = {
    "max_context": "--context",
    "backend": "--backend",
    "models": "--model",
    "profiles_file": "--profiles-file",
    "docker_host": "--docker-host",
}


def _where(loc: tuple[int | str, ...], flags: dict[str, Any]) -> str:
    """Where a bad value came from, named as the user wrote it: a flag, a variable or a config key."""
    field = str(loc[0]) if loc else ""
    if field in flags:
        return FLAGS.get(field, f"--{field.replace('_', '-')}")
    nested = "__".join(str(p).upper() for p in loc if not isinstance(p, int))
    for name in (f"DEPLOYKIT_{nested}", f"DEPLOYKIT_{field.upper()}"):
        if any(k.upper() == name for k in os.environ):
            return name
    if field and config_file().is_file():
        return f"{'.'.join(map(str, loc))} in {config_file()}"
    return ".".join(map(str, loc))


def load_settings(stack_dir: Path | None = None, **flags: Any) -> Settings:
    """Build settings from every layer; flags left as None do not override anything.

    With ``stack_dir``, that stack's ``deploykit.toml`` (when present) sits between the config file and
    the environment.
    """
    from pydantic_settings import SettingsError

    given = {k: v for k, v in flags.items() if v is not None}
    path = config_file()
    named = "DEPLOYKIT_CONFIG" in os.environ
    if (named and not path.exists()) or (path.exists() and path.is_dir()):
        raise ConfigError(
            f"config file {path} {'is a directory' if path.is_dir() else 'does not exist'}"
            + (" (named by DEPLOYKIT_CONFIG)." if named else "."),
            "Point DEPLOYKIT_CONFIG at a TOML file, or unset it." if named else "Remove it, or make it a TOML file.",
        )
    stack_file = stack_dir / STACK_SETTINGS_FILE if stack_dir is not None else None
    files = [f for f in (stack_file, path) if f is not None]
    for each in files:  # a malformed file is named here, before pydantic-settings merges them
        _check_toml(each)
    token = _stack_file.set(stack_file if stack_file is not None and _is_file(stack_file) else None)
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [
            (f"{_where(err['loc'], given)}: " if err["loc"] else "") + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        ]
        raise ConfigError(
            "invalid settings — " + "; ".join(lines) + ".",
            f"Fix them in flags, DEPLOYKIT_* variables or {' or '.join(str(f) for f in files)}.",
        ) from None
    except SettingsError as exc:  # a DEPLOYKIT_* variable that should hold JSON (a nested table)
        text = str(exc)
        field = text.split("for field ")[-1].split(" ")[0].strip("\"'") if "for field " in text else ""
        if "EnvSettingsSource" in text:
            name = f"DEPLOYKIT_{field.upper()}" if field else "a DEPLOYKIT_* variable"
            raise ConfigError(
                f"{name} is not valid: it must be a JSON object.",
                f"Set one key at a time instead, e.g. {name}__OPEN_WEBUI=mirror/open-webui:v0.12.4.",
            ) from None
        raise ConfigError(f"cannot read settings: {text}.", f"Check {config_file()}.") from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        raise ConfigError(f"cannot read {config_file()}: {exc}.", "Fix or remove the file.") from None
    finally:
        _stack_file.reset(token)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False  # a --dir the file system cannot hold: the stack folder's own check names it


def _check_toml(path: Path) -> None:
    """A settings file that pydantic-settings may read: a regular file of UTF-8 TOML, else a ConfigError."""
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_toml

    try:
        present = path.exists()
    except OSError:
        return  # a --dir the file system cannot hold: the stack folder's own check names it
    if not present:
        return
    what = "stack settings" if path.name == STACK_SETTINGS_FILE else "config file"
    hint = "Fix or remove the file."
    load_toml(read_text(path, what, hint, ConfigError), path, what, hint, ConfigError)


def _edit_stack_settings(stack_dir: Path, edit: Callable[[TOMLDocument], None], written_by: str) -> Path:
    """The stack's deploykit.toml read (or begun with a comment saying who wrote it), changed by ``edit`` with
    every other key and comment kept, read back as TOML and put in place of the old one in one rename."""
    import tomllib

    import tomlkit

    from deploykit.seams.textfile import read_text

    path = stack_dir / STACK_SETTINGS_FILE
    text = read_text(path, "stack settings", "Fix or remove the file.", ConfigError) if path.exists() else ""
    doc = tomlkit.parse(text)
    if not text:
        doc.add(tomlkit.comment(f"Settings for this stack only; they win over config.toml (written by {written_by})."))
    edit(doc)
    text = tomlkit.dumps(doc)
    tomllib.loads(text)  # what replaces the file is read back as TOML first, as render checks its own files
    tmp = path.with_name(f".{STACK_SETTINGS_FILE}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _replace_models(doc: TOMLDocument, models: list[dict[str, Any]]) -> None:
    import tomlkit

    if "models" in doc:
        del doc["models"]
    tables = tomlkit.aot()
    for entry in models:
        tables.append(tomlkit.item(entry))
    doc.append("models", tables)  # an array of tables goes last: after it, a plain key would belong to it


def write_stack_settings(stack_dir: Path, values: dict[str, Any]) -> Path:
    """Set ``values`` in the stack's deploykit.toml, keeping every other key and comment as it was."""

    def edit(doc: TOMLDocument) -> None:
        import tomlkit
        from tomlkit.items import Table

        first_table = next((i for i, (_, item) in enumerate(doc.body) if isinstance(item, Table)), None)
        for key, value in values.items():
            if key in doc:
                doc[key] = value
            elif first_table is None:
                doc.add(key, value)
            else:
                # A top-level key must come before the first [table], or TOML would put it inside that table.
                doc.body.insert(first_table, (tomlkit.key(key), tomlkit.item(value)))
                first_table += 1

    return _edit_stack_settings(stack_dir, edit, "deploykit tune")


def write_stack_models(stack_dir: Path, models: list[dict[str, Any]]) -> Path:
    """Set the stack's [[models]] in its deploykit.toml (`deploykit models add|remove`), keeping every other key
    and comment as it was; a list of one model removes the tables (the stack's one model is in its plan.json)."""

    def edit(doc: TOMLDocument) -> None:
        if len(models) > 1:
            _replace_models(doc, models)
        elif "models" in doc:
            del doc["models"]

    return _edit_stack_settings(stack_dir, edit, "deploykit")


def write_stack_model(stack_dir: Path, models: list[dict[str, Any]], index: int, values: dict[str, Any]) -> Path:
    """Set ``values`` in the [[models]] entry of the stack's model ``index`` in its deploykit.toml (`deploykit tune
    --model`), keeping the other entries, keys and comments as they were.

    ``models`` are the stack's entries as its plan.json has them, the default first. A file whose [[models]] are
    not those (none: the models came as flags) gets them, as `models add|remove` writes them."""

    def edit(doc: TOMLDocument) -> None:
        tables = doc.get("models")
        ids = [entry.get("id") for entry in models]
        if isinstance(tables, list) and [t.get("id") if isinstance(t, dict) else None for t in tables] == ids:
            for key, value in values.items():
                tables[index][key] = value
        else:
            _replace_models(doc, [entry | values if i == index else entry for i, entry in enumerate(models)])

    return _edit_stack_settings(stack_dir, edit, "deploykit tune")


def parse_image_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--image SERVICE=REF`` pairs, checked: a known service and a pinned reference."""
    services = (*SERVICES, TLS_PROXY)
    out: dict[str, str] = {}
    for pair in pairs:
        service, sep, ref = pair.partition("=")
        if not sep or not ref:
            raise UsageError(
                f"--image '{pair}' is not SERVICE=REF.", "e.g. --image open-webui=mirror/open-webui:v0.12.4"
            )
        if service not in services:
            raise UsageError(f"--image names unknown service '{service}'.", f"Services are: {', '.join(services)}.")
        try:
            check_image_ref(ref)
        except ValueError as exc:
            raise UsageError(
                f"--image {service}: {exc}.", "Images must be pinned so stacks stay reproducible."
            ) from None
        if out.get(service, ref) != ref:
            raise UsageError(f"--image names {service} twice, with different images.", "Give each service once.")
        out[service] = ref
    return out
