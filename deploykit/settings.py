"""Settings: defaults < config file < ``DEPLOYKIT_*`` environment < command-line flags.

The config file is TOML at ``$XDG_CONFIG_HOME/deploykit/config.toml`` (or ``DEPLOYKIT_CONFIG``).
Nested values use ``__`` in the environment: ``DEPLOYKIT_IMAGES__OPEN_WEBUI=mirror/open-webui:v0.12.4``.
"""

from __future__ import annotations

import os
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
from deploykit.versions import pinned

DEFAULT_MODEL = "deepseek-r1-distill-qwen-1.5b"
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

    # Defaults come from deploykit/catalog/versions.toml, the one place that names each version.
    llama_server: str = Field(pinned().llama_server, pattern=IMAGE_REF)
    llama_server_cuda: str = Field(pinned().llama_server_cuda.image, pattern=IMAGE_REF)
    vllm: str = Field(pinned().vllm.image, pattern=IMAGE_REF)
    vllm_cpu: str = Field(pinned().vllm_cpu, pattern=IMAGE_REF)
    open_webui: str = Field(pinned().open_webui, pattern=IMAGE_REF)

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
    backend: Literal["vllm", "llamacpp"] | None = None
    model_cache: Path = Field(default_factory=lambda: cache_dir() / "models")
    profiles_file: Path | None = None
    webui_port: int = Field(7860, ge=1, le=65535)
    webui_bind: str = "0.0.0.0"
    inference_port: int = Field(7861, ge=1, le=65535)
    admin_email: str = Field("admin@deploykit.local", pattern=r"^[^@\s']+@[^@\s']+\.[^@\s']+$")
    docker_host: str | None = None
    images: Images = Images()
    # Open WebUI environment settings (``[webui_env]`` in the config file), checked against the pinned
    # version's names by deploykit.webui_env; values arrive as strings, as in any environment.
    webui_env: dict[str, str] = Field(default_factory=dict)
    # A site's own templates: files here shadow the built-in ones of the same relative name.
    templates_dir: Path | None = None

    @field_validator("webui_env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value

        # TOML gives true/8/0.5 as typed values; Open WebUI parses strings ("true") like any environment.
        # Names are matched upper-case: DEPLOYKIT_WEBUI_ENV__WEBUI_NAME arrives lower-cased.
        def text(v: Any) -> Any:
            if isinstance(v, bool):
                return "true" if v else "false"
            return str(v) if isinstance(v, int | float) else v

        return {str(k).upper(): text(v) for k, v in value.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags, then environment, then the config file, then defaults.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file()))

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(
            max_context=self.max_context,
            gpu_memory_utilization=self.gpu_memory_utilization,
            parallel=self.parallel,
            backend=self.backend,
        )


def load_settings(**flags: Any) -> Settings:
    """Build settings from every layer; flags left as None do not override anything."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(
            "invalid settings — " + "; ".join(lines) + ".",
            f"Fix them in flags, DEPLOYKIT_* variables or {config_file()}.",
        ) from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed config file
        raise ConfigError(f"cannot read {config_file()}: {exc}.", "Fix or remove the file.") from None


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
