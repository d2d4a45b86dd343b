"""A site's customisation of its stacks: its template folder, its override file, and what plan.json says of them.

Three levels, from light to deep: ``[webui_env]`` settings (deploykit.values.webui_env), ``compose.override.yaml``
beside compose.yaml (deploykit.seams.override), and a ``templates_dir`` whose files shadow the built-in templates.
A shadowed built-in may change in a later deploykit; the hash of the built-in each copy was made from is kept
(``deploykit-templates.json`` in the folder, else plan.json), so `render` can say when a copy has fallen behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploykit import __version__
from deploykit.planning.render import TEMPLATES_MANIFEST, builtin_templates, sha256_text, shadowed_templates
from deploykit.seams.override import describe
from deploykit.values.errors import NotFoundError, UsageError


def _manifest(templates_dir: Path) -> dict[str, str]:
    """The folder's record of which built-in each copy was made from: template name -> built-in sha256."""
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_json

    path = templates_dir / TEMPLATES_MANIFEST
    if not os.path.lexists(path):
        return {}
    hint = f"Write it again with `deploykit templates rebase {templates_dir}`."
    data = load_json(read_text(path, "templates record", hint, limit=1024 * 1024), path, "templates record", hint)
    try:
        return {str(k): str(v["builtin_sha256"]) for k, v in data["templates"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{path} is not a templates record deploykit can read.", hint) from None


def _recorded(plan: Mapping[str, Any] | None) -> dict[str, str]:
    """The built-in hashes the stack's last render recorded (in its plan.json) for its shadowed templates."""
    try:
        shadowed = (plan or {})["customised"]["templates"]["shadowed"]
        return {str(k): str(v["builtin_sha256"]) for k, v in shadowed.items()}
    except (KeyError, TypeError, AttributeError):
        return {}


def customisation(
    templates_dir: Path | None, stack_dir: Path, plan: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """What plan.json records about the site's override and templates, and notes on copies fallen behind;
    ``plan`` is the stack's plan.json as its render read it (None for a new stack)."""
    customised: dict[str, Any] = {}
    notes: list[str] = []
    override = describe(stack_dir)
    if override is not None:
        customised["override"] = override
    if templates_dir is not None:
        if not templates_dir.is_dir():
            raise NotFoundError(
                f"templates_dir {templates_dir} is not a directory.",
                f"Create it with `deploykit templates export {templates_dir}`, or unset templates_dir.",
            )
        shadowed = shadowed_templates(templates_dir)
        bases = _recorded(plan) | _manifest(templates_dir)
        for name, hashes in shadowed.items():
            now = hashes["builtin_sha256"]
            base = bases.get(name, now)
            # Keep the base the copy was made from until the site says it has caught up (rebase).
            hashes["builtin_sha256"] = base
            if base != now:
                notes.append(
                    f"the built-in template {name} changed since your copy in {templates_dir} was made; compare "
                    f"them (`deploykit templates export NEW-DIR` writes the new one), then record that your copy is "
                    f"current with `deploykit templates rebase {templates_dir}`."
                )
        customised["templates"] = {"dir": str(templates_dir), "shadowed": shadowed}
    return customised, notes


def _write_manifest(templates_dir: Path, entries: dict[str, str]) -> None:
    data = {
        "about": "The built-in deploykit templates the copies here were made from (sha256); `render` compares them "
        "with the built-ins of the deploykit it runs.",
        "deploykit_version": __version__,
        "templates": {name: {"builtin_sha256": digest} for name, digest in sorted(entries.items())},
    }
    path = templates_dir / TEMPLATES_MANIFEST
    tmp = path.with_name(f".{TEMPLATES_MANIFEST}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # a link or pipe in its place is replaced, never written through


def _not_a_stack(folder: Path, command: str) -> None:
    """A templates folder is not a stack folder: writing templates there would mix them with its files."""
    from deploykit.values.stackfiles import STACK_FILES, TARGET_FILES

    found = sorted({*STACK_FILES, *TARGET_FILES.values()} & {p.name for p in folder.iterdir()})
    if found:
        raise UsageError(
            f"{folder} is a stack folder ({', '.join(found)}), not a templates folder; `templates {command}` "
            "does not write into it.",
            "Give the folder that templates_dir names (`deploykit templates export NEW-DIR` starts one).",
        )


def export_templates(target: Path, force: bool) -> list[str]:
    """Write the built-in templates into ``target`` to start a site's own; returns the names written."""
    from deploykit.seams.textfile import check_writable

    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory.", "Choose another directory.")
    if target.is_dir():
        _not_a_stack(target, "export")
    builtins = builtin_templates()
    existing = [name for name in builtins if os.path.lexists(target / name)]
    if existing and not force:
        raise UsageError(
            f"{target} already holds {', '.join(existing)}; deploykit does not overwrite a site's templates.",
            "Export into a new directory and compare, or add --force to overwrite them.",
        )
    hint = "Move it away, or export into a new directory."
    for name in existing:  # even with --force: a pipe, a device or a link is never written through
        check_writable(target / name, "template", hint, follow=False)
    for name, text in builtins.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    _write_manifest(target, _manifest(target) | {name: sha256_text(text) for name, text in builtins.items()})
    return list(builtins)


def rebase_templates(templates_dir: Path) -> list[str]:
    """Record that the site's copies are current with this deploykit's built-ins; returns the names recorded."""
    if not templates_dir.is_dir():
        raise NotFoundError(f"{templates_dir} is not a directory.", "Give the site's templates_dir.")
    _not_a_stack(templates_dir, "rebase")
    shadowed = shadowed_templates(templates_dir)
    if not shadowed and not os.path.lexists(templates_dir / TEMPLATES_MANIFEST):
        raise UsageError(
            f"{templates_dir} is not a templates folder: it holds none of the built-in templates' names and no "
            f"{TEMPLATES_MANIFEST}.",
            "Give the folder that templates_dir names (`deploykit templates export DIR` starts one).",
        )
    _write_manifest(templates_dir, {name: h["builtin_sha256"] for name, h in shadowed.items()})
    return list(shadowed)
