"""The house by its parts: which part may import which, no circles, no long modules or functions, and no
backend named outside deploykit/backends/. Each rule is a function run on the code and, first, on a small
example that breaks it, so a rule that cannot fail is caught too."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from deploykit.backends import BACKENDS, names
from deploykit.catalog import builtin_profiles
from tests.unit.conftest import ROOT

PACKAGE = ROOT / "deploykit"
TEMPLATES = ROOT / "templates"

# What each part may import besides itself; every import of deploykit points down these tiers.
ALLOWED: dict[str, set[str]] = {
    "cli": {"app", "config", "running", "backends", "values"},  # commands, and the output of what app returns
    "app": {"config", "running", "planning", "backends", "seams", "catalog", "quality", "values"},
    "running": {"planning", "backends", "seams", "quality", "values"},
    "config": {"backends", "seams", "values"},
    "planning": {"backends", "values"},  # pure: no seam
    "backends": {"values"},  # pure
    "seams": {"values"},
    "catalog": {"values"},  # the built-in profiles and models, and their loaders
    "quality": {"values"},  # pure: data sets, check programs, scores
    "values": set(),  # the plain data everything else shares
}
# Imports across the tiers that stay, each with its reason (one line per pair, nothing broader).
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("deploykit.planning.templating", "deploykit.seams.textfile"): "the renderer reads a site's templates, as it "
    "reads its own, through the one safe reader (regular files inside the folder, bounded, UTF-8)",
}
# The package's own two files: the version, and `python -m deploykit`.
TOP = {"deploykit": set(), "deploykit.__main__": {"cli"}}
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 70


def part_of(module: str) -> str:
    """The part a module belongs to: its folder under deploykit/."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, source: str) -> set[str]:
    """Every deploykit module ``source`` imports, at the top, in a function or under TYPE_CHECKING."""
    known = set(sources())
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deploykit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deploykit"):
            # `from deploykit.app import stack` uses the module deploykit.app.stack, not the package's face.
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= submodules or {node.module}
            if len(submodules) < len(node.names) and submodules:
                found.add(node.module)
    return {m for m in found if m in known and m != module}


def tier_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        if module in TOP:
            allowed_parts = TOP[module]
            mine = None
        else:
            mine = part_of(module)
            allowed_parts = ALLOWED[mine]
        for target in targets:
            if target in TOP:
                if target != "deploykit":  # the version is everyone's
                    bad.append(f"{module} -> {target}")
                continue
            theirs = part_of(target)
            if theirs != mine and theirs not in allowed_parts and (module, target) not in EXCEPTIONS:
                bad.append(f"{module} -> {target} ({mine} may not import {theirs})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def too_long(module: str, source: str) -> list[str]:
    lines = source.count("\n") + 1
    bad = [f"{module}: {lines} lines"] if lines > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                bad.append(f"{module}.{node.name}: {length} lines")
    return bad


def backend_names_in(module: str, source: str, backend_names: Iterable[str]) -> list[str]:
    """A backend's name written in code: a string that is one (a comparison, a dict key, a choice), or a
    comparison with a ``backend`` attribute or variable."""
    wanted = set(backend_names)
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in wanted:
            bad.append(f"{module} line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = [s for s in sides if isinstance(s, ast.Attribute | ast.Name)]
            if any((s.attr if isinstance(s, ast.Attribute) else s.id) == "backend" for s in named):
                bad.append(f"{module} line {node.lineno}: a comparison with backend")
    return bad


def template_tests(name: str, text: str, backend_names: Iterable[str]) -> list[str]:
    """A template outside a backend's own that tests the backend, or names one."""
    quoted = "|".join(re.escape(n) for n in backend_names)
    bad = [f"{name}: {m.group(0)}" for m in re.finditer(r"backend\s*(==|!=|\bin\b)", text)]
    bad += [f"{name}: {m.group(0)}" for m in re.finditer(rf"[\"']({quoted})[\"']", text)]
    return bad


def own_templates() -> set[str]:
    return {f"{folder}/{b.template}.yaml.j2" for b in BACKENDS for folder in ("services", "kubernetes")}


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module, source) for module, source in sources().items()}


# ---------------------------------------------------------------- each rule breaks on an example first


def test_the_rules_catch_what_they_forbid() -> None:
    assert tier_violations({"deploykit.planning.render": {"deploykit.seams.engine"}}) == [
        "deploykit.planning.render -> deploykit.seams.engine (planning may not import seams)"
    ]
    assert tier_violations({"deploykit.values.host": {"deploykit.backends"}})
    assert tier_violations({"deploykit.seams.engine": {"deploykit.cli"}})
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert too_long("example", long_function) == [f"example.f: {MAX_FUNCTION_LINES + 1} lines"]
    assert too_long("example", "x = 1\n" * MAX_MODULE_LINES)
    code = 'if plan.backend == "vllm":\n    pass\nflag = {"llamacpp": 1}[name]\nif backend != wanted:\n    pass\n'
    assert len(backend_names_in("example", code, ["vllm", "llamacpp"])) == 4
    assert template_tests("x.j2", '{% if plan.backend == "llamacpp" %}', ["vllm", "llamacpp"])
    assert imports_of("example", "def f():\n    from deploykit.app import stack\n") == {"deploykit.app.stack"}
    assert imports_of("example", "from deploykit.backends import named\n") == {"deploykit.backends"}


# ---------------------------------------------------------------- the house


def test_imports_point_down_the_tiers() -> None:
    assert tier_violations(graph()) == []


def test_no_import_circles() -> None:
    assert circles(graph()) == []


def test_every_module_sits_in_a_part() -> None:
    for module in sources():
        assert module in TOP or part_of(module) in ALLOWED, module


def test_no_long_modules_or_functions() -> None:
    bad = [problem for module, source in sources().items() for problem in too_long(module, source)]
    assert bad == []


def test_no_backend_is_named_outside_its_package() -> None:
    bad = [
        problem
        for module, source in sources().items()
        if not module.startswith("deploykit.backends")
        for problem in backend_names_in(module, source, names())
    ]
    assert bad == []


def test_templates_pick_a_backend_by_its_template_only() -> None:
    mine = own_templates()
    bad = [
        problem
        for path in sorted(TEMPLATES.rglob("*.j2"))
        if (name := path.relative_to(TEMPLATES).as_posix()) not in mine
        for problem in template_tests(name, path.read_text(encoding="utf-8"), names())
    ]
    assert bad == []
    assert all((TEMPLATES / name).is_file() for name in mine)


@pytest.mark.parametrize("profile", builtin_profiles(), ids=lambda p: p.name)
def test_built_in_profiles_prefer_a_known_backend(profile: object) -> None:
    preferred = getattr(profile, "preferred_backend", None)
    assert preferred is None or preferred in names()
