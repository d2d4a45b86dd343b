"""Load profiles and models from TOML, validate them, and find one by name with suggestions."""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from deploykit.values.documents import load_toml
from deploykit.values.errors import ConfigError, NotFoundError
from deploykit.values.host import HostProfile
from deploykit.values.model import ModelSpec
from deploykit.values.units import GiB


def _bytes_from_gib(table: Mapping[str, Any]) -> dict[str, Any]:
    """Let data files say ``total_gib = 16`` where the model holds ``total_bytes``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out[key] = _bytes_from_gib(value)
        elif isinstance(value, list):
            out[key] = [_bytes_from_gib(v) if isinstance(v, Mapping) else v for v in value]
        elif key.endswith("_gib") and isinstance(value, int | float) and not isinstance(value, bool):
            size = value * GiB
            if not math.isfinite(size) or size >= 2**63:
                raise ConfigError(f"{key} = {value} is not a size in GiB.", "Give a positive number such as 16.")
            out[key[: -len("_gib")] + "_bytes"] = int(size)
        else:
            out[key] = value
    return out


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())


def _profile_from(
    data: Mapping[str, Any],
    origin: str,
    source: Literal["builtin", "user"],
    check_backend: Callable[[str], object] | None = None,
) -> HostProfile:
    """The profile, validated; ``check_backend`` (a ValueError for a name no backend has) checks the backend
    it prefers, since the backends sit above this module."""
    hint = "Compare it with `deploykit profiles --json` output or a file in deploykit/catalog/profiles/."
    try:
        profile = HostProfile.model_validate({**_bytes_from_gib(data), "source": source})
    except ValidationError as exc:
        raise ConfigError(f"profile in {origin} is not valid: {_errors(exc)}.", hint) from None
    if check_backend is not None and profile.preferred_backend is not None:
        try:
            check_backend(profile.preferred_backend)
        except ValueError as exc:
            raise ConfigError(f"profile in {origin} is not valid: preferred_backend: {exc}.", hint) from None
    return profile


def _read_toml(path: Path, text: str) -> dict[str, Any]:
    return load_toml(text, path, "profiles file", "Fix the syntax and try again.", ConfigError)


def _data_files(folder: str) -> list[tuple[str, str]]:
    root = resources.files("deploykit.catalog").joinpath(folder)
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8")) for entry in root.iterdir() if entry.name.endswith(".toml")
    )


@cache
def builtin_profiles() -> tuple[HostProfile, ...]:
    return tuple(
        _profile_from(tomllib.loads(text), f"built-in {name}", "builtin") for name, text in _data_files("profiles")
    )


@cache
def builtin_models() -> tuple[ModelSpec, ...]:
    models = []
    for name, text in _data_files("models"):
        try:
            data = tomllib.loads(text)
            data.pop(EVALUATION, None)  # eval's settings, not the planner's: model_evaluation reads them
            models.append(ModelSpec.model_validate(data))
        except ValidationError as exc:
            raise ConfigError(f"built-in model {name} is not valid: {_errors(exc)}.") from None
    return tuple(models)


EVALUATION = "evaluation"


@cache
def model_evaluation(model_id: str) -> dict[str, Any]:
    """A built-in model's ``[evaluation]`` table (sampling its card recommends, figures it publishes, their
    source); empty for a model without one or not in the catalog."""
    for _name, text in _data_files("models"):
        data = tomllib.loads(text)
        if data.get("id") == model_id:
            table = data.get(EVALUATION, {})
            return dict(table) if isinstance(table, dict) else {}
    return {}


def load_profiles_file(path: Path, text: str, check_backend: Callable[[str], object]) -> tuple[HostProfile, ...]:
    """User profiles from ``text``, the file at ``path``: ``[profiles.NAME]`` tables, each shaped like a built-in
    profile file; ``check_backend`` refuses a backend name deploykit does not know (a ValueError)."""
    data = _read_toml(path, text)
    tables = data.get("profiles")
    shape_hint = "Write one table per profile, e.g. [profiles.office-pc] with [profiles.office-pc.cpu] …"
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"{path} defines no profiles.", shape_hint)
    unknown = sorted(set(data) - {"profiles"}) + sorted(n for n, t in tables.items() if not isinstance(t, Mapping))
    if unknown:
        raise ConfigError(f"{path} has entries that are not profile tables: {', '.join(unknown)}.", shape_hint)
    return tuple(
        _profile_from({"name": name, **table}, f"{path} [profiles.{name}]", "user", check_backend)
        for name, table in tables.items()
    )


def _closest(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return " or ".join(f"'{c}'" for c in close)


def find_profile(name: str, profiles: Iterable[HostProfile]) -> HostProfile:
    by_name = {p.name: p for p in profiles}
    if name in by_name:
        return by_name[name]
    close = _closest(name, [*by_name, "auto"])
    raise NotFoundError(
        f"profile '{name}' is not known.",
        (f"did you mean {close}? " if close else "") + "`deploykit profiles` lists them all.",
    )


def find_model(model_id: str, models: Iterable[ModelSpec]) -> ModelSpec:
    by_id = {m.id: m for m in models}
    if model_id in by_id:
        return by_id[model_id]
    lowered = {m.id.lower(): m for m in models} | {(m.hf_repo or "").lower(): m for m in models}
    if model_id.lower() in lowered:
        return lowered[model_id.lower()]
    close = _closest(model_id, by_id)
    raise NotFoundError(
        f"model '{model_id}' is not in the catalog.",
        (f"did you mean {close}? " if close else "")
        + "`deploykit models` lists them; a local file works with --model-file PATH.",
    )
