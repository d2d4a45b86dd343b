"""Settings: defaults < config file < the stack's deploykit.toml < ``DEPLOYKIT_*`` environment < flags.

The config file is TOML at ``$XDG_CONFIG_HOME/deploykit/config.toml`` (or ``DEPLOYKIT_CONFIG``). A stack
directory may hold ``deploykit.toml`` in the same shape: settings for that stack only (``deploykit tune``
writes its measured winner there, so a later render or up keeps it).
Nested values use ``__`` in the environment: ``DEPLOYKIT_IMAGES__OPEN_WEBUI=mirror/open-webui:v0.12.4``.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from deploykit.errors import ConfigError, UsageError
from deploykit.plan import PlanSettings

DEFAULT_MODEL = "deepseek-r1-distill-qwen-1.5b"
STACK_SETTINGS_FILE = "deploykit.toml"
# The stack file the settings being built read; a context variable because pydantic-settings asks the
# class, not the instance, for its sources.
_stack_file: ContextVar[Path | None] = ContextVar("deploykit_stack_file", default=None)
IMAGE_REF = r"^[a-z0-9][a-z0-9._/:@-]*$"


def config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "deploykit"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deploykit"


def config_file() -> Path:
    return Path(os.environ.get("DEPLOYKIT_CONFIG") or config_dir() / "config.toml")


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


class Images(BaseModel):
    """Container images, pinned. Air-gapped teams point these at their own mirror."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    llama_server: str = Field("ghcr.io/ggml-org/llama.cpp:server-b9603", pattern=IMAGE_REF)
    llama_server_cuda: str = Field("ghcr.io/ggml-org/llama.cpp:server-cuda12-b9603", pattern=IMAGE_REF)
    vllm: str = Field("vllm/vllm-openai:v0.17.1", pattern=IMAGE_REF)
    vllm_cpu: str = Field("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.17.1", pattern=IMAGE_REF)
    open_webui: str = Field("ghcr.io/open-webui/open-webui:v0.12.4", pattern=IMAGE_REF)

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return check_pinned(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEPLOYKIT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    model: str = DEFAULT_MODEL
    max_context: int = Field(4096, ge=256, le=1_048_576)
    gpu_memory_utilization: float | None = Field(None, gt=0.1, le=0.99)
    parallel: int = Field(1, ge=1, le=64)
    threads: int | None = Field(None, ge=1, le=1024)
    backend: Literal["vllm", "llamacpp"] | None = None
    model_cache: Path = Field(default_factory=lambda: cache_dir() / "models")
    profiles_file: Path | None = None
    webui_port: int = Field(7860, ge=1, le=65535)
    webui_bind: str = "0.0.0.0"
    inference_port: int = Field(7861, ge=1, le=65535)
    admin_email: str = Field("admin@deploykit.local", pattern=r"^[^@\s']+@[^@\s']+\.[^@\s']+$")
    docker_host: str | None = None
    images: Images = Images()

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
        return PlanSettings(
            max_context=self.max_context,
            gpu_memory_utilization=self.gpu_memory_utilization,
            parallel=self.parallel,
            backend=self.backend,
            threads=self.threads,
        )


def load_settings(stack_dir: Path | None = None, **flags: Any) -> Settings:
    """Build settings from every layer; flags left as None do not override anything.

    With ``stack_dir``, that stack's ``deploykit.toml`` (when present) sits between the config file and
    the environment.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    stack_file = stack_dir / STACK_SETTINGS_FILE if stack_dir is not None else None
    files = [f for f in (stack_file, config_file()) if f is not None]
    for path in files:  # a malformed file is named here, before pydantic-settings merges them
        _check_toml(path)
    token = _stack_file.set(stack_file if stack_file is not None and stack_file.is_file() else None)
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(
            "invalid settings — " + "; ".join(lines) + ".",
            f"Fix them in flags, DEPLOYKIT_* variables or {' or '.join(str(f) for f in files)}.",
        ) from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        raise ConfigError(f"cannot read {config_file()}: {exc}.", "Fix or remove the file.") from None
    finally:
        _stack_file.reset(token)


def _check_toml(path: Path) -> None:
    if not path.is_file():
        return
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}.", "Fix or remove the file.") from None


def write_stack_settings(stack_dir: Path, values: dict[str, Any]) -> Path:
    """Set ``values`` in the stack's deploykit.toml, keeping every other key and comment as it was."""
    import tomlkit
    from tomlkit.items import Table

    path = stack_dir / STACK_SETTINGS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    doc = tomlkit.parse(text)
    if not text:
        doc.add(tomlkit.comment("Settings for this stack only; they win over config.toml (written by deploykit tune)."))
    body = doc.body
    first_table = next((i for i, (_, item) in enumerate(body) if isinstance(item, Table)), None)
    for key, value in values.items():
        if key in doc:
            doc[key] = value
        elif first_table is None:
            doc.add(key, value)
        else:
            # A top-level key must come before the first [table], or TOML would put it inside that table.
            doc.body.insert(first_table, (tomlkit.key(key), tomlkit.item(value)))
            first_table += 1
    tmp = path.with_name(f".{STACK_SETTINGS_FILE}.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    tmp.replace(path)
    return path


def parse_image_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--image SERVICE=REF`` pairs, checked: a known service and a pinned reference."""
    services = ("inference", "open-webui")
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
            check_pinned(ref)
        except ValueError as exc:
            raise UsageError(
                f"--image {service}: {exc}.", "Images must be pinned so stacks stay reproducible."
            ) from None
        out[service] = ref
    return out
