"""compose.override.yaml: a site's own changes to a stack, merged by Docker Compose on top of compose.yaml.

deploykit never writes or deletes it; every compose command it runs names it after compose.yaml, and `up`
checks that the two merge before anything starts. This module finds the file and turns a merge error into
one sentence naming the override's line.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from deploykit.values.errors import ConfigError

OVERRIDE_FILE = "compose.override.yaml"


def override_path(stack_dir: Path) -> Path | None:
    path = stack_dir / OVERRIDE_FILE
    return path if path.is_file() else None


def describe(stack_dir: Path) -> dict[str, str] | None:
    """What plan.json and status record about the override: its name and content hash, or None."""
    path = override_path(stack_dir)
    if path is None:
        return None
    from deploykit.seams.textfile import read_bytes

    data = read_bytes(path, "override", "Fix or remove the file; `deploykit render` never touches it.", ConfigError)
    return {"file": OVERRIDE_FILE, "sha256": hashlib.sha256(data).hexdigest()}


def _node_line(root: Any, path: list[str]) -> int | None:
    """1-based line of the deepest mapping key along ``path`` in a composed YAML node tree."""
    import yaml

    node, line = root, None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                node, line = value, key.start_mark.line + 1
                break
        else:
            break
    return line


def check_syntax(path: Path) -> Any:
    """The override's YAML node tree; a ConfigError naming the line when it is not a YAML mapping."""
    import yaml

    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import too_deep

    hint = "Fix the file; `deploykit render` never touches it."
    text = read_text(path, "override", hint, ConfigError)
    try:
        root = yaml.compose(text)
    except RecursionError:
        raise too_deep(path, "override", hint, ConfigError) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{path}{where}: not valid YAML ({problem}).", "Fix the file; `deploykit render` never touches it."
        ) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path} line 1: the override must be a mapping (services: …).", _HINT)
    return root


_HINT = "Fix or remove it; `docker compose config` in the stack directory shows the merged result."


def merge_error(path: Path, compose_message: str, services: list[str]) -> ConfigError:
    """A compose merge failure as one sentence naming the override's line, when it can be found."""
    root = check_syntax(path)
    message = compose_message.strip().splitlines()[-1] if compose_message.strip() else "compose refused it"
    line = None
    dotted = re.search(r"(services(?:\.[\w.-]+)+)", message)
    service = re.search(r'service "([^"]+)"', message)
    if dotted:
        line = _node_line(root, dotted.group(1).split("."))
    elif service:
        line = _node_line(root, ["services", service.group(1)])
    hint = _HINT
    if service and service.group(1) not in services:
        hint = f"The stack's services are {', '.join(services)}; a new service needs its own image. " + _HINT
    where = f" line {line}" if line else ""
    return ConfigError(f"{path}{where} does not merge with compose.yaml: {message}.", hint)
