"""Templates are data: Jinja in its immutable sandbox, strict about undefined names, bounded, and what they
render parsed before it may replace a working file.

A site's templates folder (``templates_dir``, possibly named by a fleet inventory for any group of hosts)
is text from elsewhere: rendered in ``ImmutableSandboxedEnvironment`` it cannot reach Python's internals
(``__class__``, ``__globals__``) nor change the data it is given; its files are read through
``deploykit.textfile`` (regular files inside the folder only: no link out of it, no named pipe), and
numbers and strings it makes are kept to sizes a stack file could use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deploykit.values.errors import ConfigError, UsageError
from deploykit.values.services import TLS_PROXY
from deploykit.values.stackplan import MODELS_PRESET, PRESET_PATH, kubernetes_label

MAX_TEMPLATE_BYTES = 1024 * 1024  # one template file
MAX_OUTPUT_CHARS = 16 * 1024 * 1024  # one rendered file: a stack file is a few KiB
MAX_POWER = 1 << 64  # the largest number ** may make
_HINT = "Fix the template (`deploykit templates export DIR` writes the built-ins to compare with)."


class SiteLoader(jinja2.BaseLoader):
    """A site's templates folder: a template that is absent there falls through to the built-ins."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        from deploykit.seams.textfile import read_text

        path = self.root.joinpath(*jinja2.loaders.split_template_path(template))  # refuses ".." parts
        if not os.path.lexists(path):
            raise jinja2.TemplateNotFound(template)
        try:
            inside = path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # a loop of links
            inside = False
        if not inside:
            raise UsageError(
                f"site template {path} is a link to a file outside {self.root}; deploykit reads site templates "
                "only from inside their folder.",
                "Copy the file into the templates folder instead of linking to it.",
            )
        text = read_text(path, "site template", _HINT, UsageError, MAX_TEMPLATE_BYTES)
        mtime = path.stat().st_mtime
        return text, str(path), lambda: _mtime(path) == mtime


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` kept from making numbers or strings no stack file needs."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 64 and abs(left) > 1:
            raise SecurityError(f"{left} ** {right} is a larger number than a template needs")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                    raise SecurityError(f"repeating a {type(seq).__name__} {n} times makes too long a value")
        return super().call_binop(context, operator, left, right)


def render(env: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    """Template ``name`` rendered, stopping once the output is larger than any stack file would be."""
    parts: list[str] = []
    size = 0
    for part in env.get_template(name).generate(dict(context)):
        size += len(part)
        if size > MAX_OUTPUT_CHARS:
            raise SecurityError(f"{name} renders more than {MAX_OUTPUT_CHARS // 1024**2} MiB")
        parts.append(part)
    return "".join(parts)


# ---------------------------------------------------------------- checking what was rendered


class RenderedFileError(Exception):
    """A rendered file that is not what its name says: not YAML, not JSON, a key written twice."""

    def __init__(self, name: str, problem: str, duplicate: str | None = None) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem
        self.duplicate = duplicate  # the key written twice, when that is the problem


def _yaml_loader() -> type[Any]:
    import yaml

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class NoDuplicates(base):  # type: ignore[misc]
        """Compose refuses a mapping that repeats a key ("mapping key already defined"); so do we."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) and key in seen:
                    line = key_node.start_mark.line + 1
                    raise RenderedFileError("", f"line {line}: the key {key!r} appears twice", str(key))
                seen.add(key)
            return super().construct_mapping(node, deep)

    return NoDuplicates


def _parse_yaml(name: str, text: str, documents: bool) -> list[Any]:
    import yaml

    try:
        loaded = list(yaml.load_all(text, Loader=_yaml_loader())) if documents else [yaml.load(text, _yaml_loader())]
    except RenderedFileError as exc:
        raise RenderedFileError(name, exc.problem, exc.duplicate) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RenderedFileError(name, f"{where}not valid YAML ({problem})") from None
    except RecursionError:
        raise RenderedFileError(name, "YAML nested too deeply to read") from None
    return loaded


def check_stack_file(name: str, text: str, services: tuple[str, ...]) -> None:
    """compose.yaml / swarm.yaml: one YAML mapping with the stack's services; kubernetes.yaml: manifests."""
    if name == "kubernetes.yaml":
        deployed = set()
        for doc in _parse_yaml(name, text, documents=True):
            if doc is not None and not (isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc):
                raise RenderedFileError(name, "a document is not a Kubernetes object (apiVersion, kind)")
            if isinstance(doc, dict) and doc["kind"] == "Deployment":
                labels = (doc.get("metadata") or {}).get("labels") or {}
                deployed.add(labels.get("app.kubernetes.io/name"))
        # A Deployment per service, named by its label (the TLS proxy is Compose's and Swarm's only).
        missing = [s for s in services if s != TLS_PROXY and kubernetes_label(s) not in deployed]
        if missing:
            raise RenderedFileError(name, f"the Deployments of {', '.join(missing)} are missing")
        return
    (doc,) = _parse_yaml(name, text, documents=False)
    found = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(found, dict):
        raise RenderedFileError(name, "not a Compose file (no services mapping)")
    missing = [s for s in services if s not in found]
    if missing:
        raise RenderedFileError(name, f"the services {', '.join(missing)} are missing")


def check_files(files: Mapping[str, str], main: str, services: tuple[str, ...]) -> None:
    """Every file about to be written, parsed as what it is; RenderedFileError naming the first that is not."""
    import io
    import json

    from dotenv.parser import parse_stream

    check_stack_file(main, files[main], services)
    try:
        json.loads(files["plan.json"])
    except (ValueError, RecursionError) as exc:
        raise RenderedFileError("plan.json", f"not JSON ({exc})") from None
    for binding in parse_stream(io.StringIO(files[".env"])):
        if binding.error:
            raise RenderedFileError(".env", f"line {binding.original.line} is not KEY=VALUE")
    if PRESET_PATH in files:
        check_preset(files[PRESET_PATH])


def check_preset(text: str) -> None:
    """The router's models.ini as llama.cpp reads it: comments, ``[section]`` headers and ``key = value`` lines;
    a section for each model; no value llama.cpp would cut at an inline ``#``/``;``."""
    sections = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if re.fullmatch(r"\[[^\[\]#;]+\]", stripped):
            sections += stripped != "[*]"
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", key.strip()) or any(c in value for c in "#;[]"):
            raise RenderedFileError(MODELS_PRESET, f"line {number} is neither a [section] nor key = value")
    if sections == 0:
        raise RenderedFileError(MODELS_PRESET, "no model section")


def as_user_error(
    exc: RenderedFileError, templates_dir: Path | None, webui_names: set[str]
) -> ConfigError | UsageError | None:
    """The sentence for a rendered file that failed its check; None when deploykit's own templates made it
    (a bug, reported as one)."""
    if exc.duplicate is not None and exc.duplicate in webui_names:
        return ConfigError(
            f"[webui_env] sets {exc.duplicate}, which the stack's template sets itself, so {exc.name} would hold "
            "it twice (Compose refuses that).",
            "Remove it from [webui_env]; to change that wiring for one stack, use compose.override.yaml.",
        )
    if templates_dir is None:
        return None
    return UsageError(
        f"the site templates in {templates_dir} render a {exc.name} that deploykit will not write: {exc.problem}; "
        "nothing was written.",
        _HINT,
    )
