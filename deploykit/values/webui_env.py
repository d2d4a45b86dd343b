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

# Set by the stack itself: the connection to the inference server, its key, the session secret and the
# default model. A unit test keeps this in step with what templates/compose.yaml.j2 sets; a site template
# that sets more is caught when the rendered file is checked (a key written twice).
RESERVED = frozenset(
    {
        "OPENAI_API_BASE_URL",
        "OPENAI_API_BASE_URLS",
        "OPENAI_API_KEY",
        "OPENAI_API_KEYS",
        "ENABLE_OPENAI_API",
        "ENABLE_OLLAMA_API",
        "WEBUI_SECRET_KEY",
        "DEFAULT_MODELS",
    }
)
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # used with fullmatch: "$" would let a trailing newline through
# Names that say their value is a secret: it goes into the 0600 .env, and compose.yaml only refers to it.
SECRET_NAME = re.compile(r"(?!ENABLE_)[A-Z0-9_]*(PASSWORD|SECRET|KEY|KEYS|TOKEN)")


def is_secret(name: str) -> bool:
    return SECRET_NAME.fullmatch(name) is not None


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(settings written into compose.yaml, secrets kept in .env) of a checked [webui_env] table."""
    plain = {k: v for k, v in env.items() if not is_secret(k)}
    return plain, {k: v for k, v in env.items() if is_secret(k)}


def _value_problem(name: str, value: str) -> str | None:
    """What makes the value unusable, in words that never repeat it (it may be a secret)."""
    # Tabs and (outside .env) newlines are text; NUL, escape sequences and other control characters are not.
    if any((ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F for c in value):
        return "holds a control character (NUL, escape …)"
    if is_secret(name):
        if not value:
            return "is empty (a secret needs a value; remove the name to leave Open WebUI's default)"
        if any(c in value for c in "'\n\r"):
            return "holds a quote or a newline, which .env (where secrets are kept) cannot hold"
    return None


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
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(
                f"[webui_env] name {name[:80]!r} is not an environment variable name.",
                "Use upper-case letters, digits and '_', as Open WebUI's documentation spells them.",
            )
        if name in RESERVED:
            raise ConfigError(
                f"[webui_env] sets {name}, which deploykit sets itself (the inference connection, its secrets "
                "and the default model).",
                "Remove it; to change that wiring for one stack, use compose.override.yaml in the stack directory.",
            )
        problem = _value_problem(name, value)
        if problem is not None:
            raise ConfigError(f"[webui_env] the value of {name} {problem}.", "Fix the value where it is set.")
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
