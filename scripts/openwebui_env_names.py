"""Extract the environment settings the pinned Open WebUI knows into deploykit/catalog/openwebui-env.json.

Reads ``open_webui/config.py`` and ``open_webui/env.py`` from an Open WebUI wheel (or an installed package
directory) and records every name read with ``os.environ.get``/``os.getenv``/``os.environ[...]``, and which of
them Open WebUI stores in its database (the ``DEFAULT_CONFIG`` table: config key -> variable), because those are
the ones its saved settings override after the first start.

    pip download open-webui==0.12.4 --no-deps -d /tmp/owui
    python scripts/openwebui_env_names.py /tmp/owui/open_webui-0.12.4-py3-none-any.whl

For a new pin, run it on the new wheel and commit the regenerated file.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploykit" / "catalog" / "openwebui-env.json"
SOURCES = ("open_webui/config.py", "open_webui/env.py")


def read_sources(where: Path) -> tuple[str, dict[str, str]]:
    """(version, {relative path: source text}) from a wheel or a directory holding ``open_webui/``."""
    if where.is_file():
        with zipfile.ZipFile(where) as wheel:
            texts = {name: wheel.read(name).decode("utf-8") for name in SOURCES}
        match = re.search(r"open_webui-([^-]+)-", where.name)
        return (match.group(1) if match else "unknown"), texts
    texts = {name: (where / name).read_text(encoding="utf-8") for name in SOURCES}
    meta = next(where.glob("open_webui-*.dist-info"), None)
    return (meta.name.split("-")[1] if meta else "unknown"), texts


def env_reads(tree: ast.AST) -> dict[str, str]:
    """Env name -> the module variable it is assigned to (the name itself when read elsewhere)."""
    found: dict[str, str] = {}

    def env_name(node: ast.AST) -> str | None:
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func in ("os.environ.get", "os.getenv", "environ.get", "getenv") and isinstance(node.args[0].value, str):
                return node.args[0].value
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                return key.value
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            for inner in ast.walk(node.value):
                name = env_name(inner)
                if name:
                    found.setdefault(name, node.targets[0].id)
        name = env_name(node)
        if name:
            found.setdefault(name, name)
    return found


def stored_keys(tree: ast.AST) -> dict[str, str]:
    """Module variable -> the database config key, from ``DEFAULT_CONFIG = {'a.b': VARIABLE, ...}``."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "DEFAULT_CONFIG" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                value.id: key.value
                for key, value in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Name)
            }
    return {}


def extract(where: Path) -> dict[str, object]:
    version, texts = read_sources(where)
    variables: dict[str, str] = {}
    keys: dict[str, str] = {}
    for text in texts.values():
        tree = ast.parse(text)
        for name, variable in env_reads(tree).items():
            variables.setdefault(name, variable)
        keys |= stored_keys(tree)
    stored = {name: keys[variable] for name, variable in variables.items() if variable in keys}
    return {
        "open_webui_version": version,
        "source": "open_webui/config.py and open_webui/env.py, by scripts/openwebui_env_names.py",
        "names": sorted(variables),
        "stored": dict(sorted(stored.items())),
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    data = extract(Path(sys.argv[1]))
    OUT.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(data['names'])} names, {len(data['stored'])} stored in the database")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
