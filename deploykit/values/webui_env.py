"""Open WebUI settings as data: the ``[webui_env]`` table, checked against what the pinned version knows.

The names come from ``catalog/openwebui-env.json``, extracted from the pinned Open WebUI's own source by
``scripts/openwebui_env_names.py``. Names Open WebUI also stores in its database ("stored", its
PersistentConfig) are read from the environment on the first start only; deploykit writes those through
the admin API on every ``up`` (``webui.apply_stored``), so a changed value always takes effect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any

from pydantic import BeforeValidator

from deploykit.values.errors import ConfigError

# Set by the stack itself: the connection to the inference server, its key and the session secret.
RESERVED = frozenset(
    {
        "OPENAI_API_BASE_URL",
        "OPENAI_API_BASE_URLS",
        "OPENAI_API_KEY",
        "OPENAI_API_KEYS",
        "ENABLE_OPENAI_API",
        "ENABLE_OLLAMA_API",
        "WEBUI_SECRET_KEY",
    }
)
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def env_strings(value: Any) -> Any:
    """A ``[webui_env]`` table as environment strings."""
    if not isinstance(value, dict):
        return value

    # TOML gives true/8/0.5 as typed values; Open WebUI parses strings ("true") like any environment.
    # Names are matched upper-case: DEPLOYKIT_WEBUI_ENV__WEBUI_NAME arrives lower-cased.
    def text(v: Any) -> Any:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int | float) else v

    return {str(k).upper(): text(v) for k, v in value.items()}


# A [webui_env] table wherever one is written (the settings, the fleet inventory's layers): names upper-case,
# values as environment strings.
WebuiEnv = Annotated[dict[str, str], BeforeValidator(env_strings)]


@dataclass(frozen=True)
class Catalog:
    open_webui_version: str
    names: frozenset[str]
    stored: Mapping[str, str]  # env name -> Open WebUI's database config key


@cache
def catalog() -> Catalog:
    data = json.loads(resources.files("deploykit.catalog").joinpath("openwebui-env.json").read_text("utf-8"))
    return Catalog(data["open_webui_version"], frozenset(data["names"]), dict(data["stored"]))


def check(env: Mapping[str, str]) -> list[str]:
    """Warnings for names the pinned Open WebUI does not read; raises on names it cannot take."""
    known = catalog()
    warnings = []
    for name in env:
        if not ENV_NAME.match(name):
            raise ConfigError(
                f"[webui_env] name '{name}' is not an environment variable name.",
                "Use upper-case letters, digits and '_', as Open WebUI's documentation spells them.",
            )
        if name in RESERVED:
            raise ConfigError(
                f"[webui_env] sets {name}, which deploykit sets itself (the inference connection and secrets).",
                "Remove it; to change that wiring for one stack, use compose.override.yaml in the stack directory.",
            )
        if name not in known.names:
            import difflib

            close = difflib.get_close_matches(name, known.names, n=1)
            warnings.append(
                f"[webui_env] {name} is not a setting Open WebUI {known.open_webui_version} reads"
                + (f" (did you mean {close[0]}?)" if close else "")
                + "; it is passed on anyway."
            )
    return warnings


def stored_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The entries Open WebUI keeps in its database, by config key: these need the admin API."""
    stored = catalog().stored
    return {stored[name]: value for name, value in env.items() if name in stored}


def typed(value: str, current: object) -> object:
    """An environment string as the JSON type Open WebUI stores for the key, parsed as Open WebUI parses env."""
    if isinstance(current, bool):
        return value.strip().lower() == "true"
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, list | dict):
        text = value.strip()
        if text.startswith(("[", "{")):
            return json.loads(text)
        if isinstance(current, list):
            # Open WebUI's list settings come from ';'- or ','-separated strings.
            sep = ";" if ";" in text else ","
            return [part.strip() for part in text.split(sep) if part.strip()]
        raise ValueError("expected a JSON object")
    return value
