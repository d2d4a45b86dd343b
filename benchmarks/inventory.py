"""A large fleet inventory: loading (and checking) it, and `fleet plan` over it, at 100, 1000 and 5000 hosts.

Every host has its own override and tls_dir lines, a group and labels: the shape that made loading quadratic
(each host's line was found by rescanning the whole file). Side by side in one run: this tree's
``load_inventory`` and the one before the fix (``BASELINE_REV``'s deploykit/fleet.py, loaded from git), and
the ratio of each size's time to the previous one's (×10 or ×5 the hosts should cost ×10 or ×5 the time).
`fleet plan --json` runs the real command against engines that are not there (unix sockets that do not
exist): every host ends "unreachable", so the figure is deploykit's own cost per host.

Target: 5000 hosts load in under a second and plan in under a minute on the 2-core CI machine; the time
grows linearly (ratio ≈ the ratio of host counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"
BASELINE_REV = "0b2a504"  # the last commit before the inventory was indexed in one pass
SIZES = (100, 1000, 5000)
BASELINE_MAX = 1000  # the quadratic baseline takes minutes at 5000 hosts: measured up to here only


def inventory(folder: Path, hosts: int) -> Path:
    """An inventory of ``hosts`` workstations, each naming its own override and TLS folder."""
    (folder / "o.yaml").write_text("services: {}\n", encoding="utf-8")
    lines = ["[webui_env]", 'WEBUI_NAME = "Lab"', "", "[groups.lab]", 'templates_dir = "templates"', ""]
    for i in range(hosts):
        lines += [
            "[[hosts]]",
            f'name = "lab-{i:05d}"',
            f'engine = "unix:///nonexistent/deploykit-bench-{i}.sock"',
            'group = "lab"',
            'override = "o.yaml"',
            f'tls_dir = "tls/{i % 7}"',
            f'labels = {{ room = "b{i % 10}", seat = "{i}" }}',
            "",
        ]
    path = folder / f"inventory-{hosts}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def baseline_module() -> ModuleType | None:
    """deploykit/fleet.py as it was at BASELINE_REV, importable beside today's package; None when git cannot say."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_REV}:deploykit/fleet.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("fleet_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    try:
        exec(compile(source, f"{BASELINE_REV}:deploykit/fleet.py", "exec"), module.__dict__)
    except Exception as exc:  # the package moved on (issue 16's layout): no baseline, say why
        print(f"baseline {BASELINE_REV} not loadable here: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return module


def seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plan_seconds(path: Path) -> float:
    """`deploykit fleet plan --json` over the inventory, wall time (every host unreachable)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(path.parent / "config"), "XDG_CACHE_HOME": str(path.parent / "cache")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "deploykit", "fleet", "plan", "--inventory", str(path), "-p", "cpu", "--json"],
        capture_output=True,
        env=env,
        check=False,
    )
    took = time.perf_counter() - start
    if done.returncode != 1 or b'"unreachable"' not in done.stdout:  # 1: hosts failed, as they must here
        raise SystemExit(f"fleet plan did not run as expected (exit {done.returncode}): {done.stderr[-400:]!r}")
    return took


def main() -> None:
    from deploykit.config.inventory import load_inventory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="loads per size (the median is shown)")
    parser.add_argument("--write", action="store_true", help=f"append the table to {RESULTS}")
    opts = parser.parse_args()
    baseline = baseline_module()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-inventory-") as scratch:
        folder = Path(scratch)
        (folder / "templates").mkdir()
        for i in range(7):
            (folder / "tls" / str(i)).mkdir(parents=True)
        for hosts in SIZES:
            path = inventory(folder, hosts)
            loaded = load_inventory(path)
            assert len(loaded.hosts) == hosts and loaded.hosts[-1].override == str(folder / "o.yaml")
            now = seconds(partial(load_inventory, path), opts.runs)
            before = None
            if baseline is not None and hosts <= BASELINE_MAX:
                before = seconds(partial(baseline.load_inventory, path), 1)
            rows.append((hosts, now, before, plan_seconds(path)))
    lines = [
        "| hosts | load_inventory (ms) | × previous size | before the fix (ms) | before ÷ now | "
        "`fleet plan --json` (s) | × previous size |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    previous: tuple[int, float, float | None, float] | None = None
    for hosts, now, before, plan in rows:
        grow = f"{now / previous[1]:.1f} (hosts ×{hosts // previous[0]})" if previous else "—"
        plan_grow = f"{plan / previous[3]:.1f}" if previous else "—"
        was = f"{before * 1000:.0f}" if before is not None else "not run"
        ratio = f"{before / now:.0f}×" if before is not None else "—"
        lines.append(f"| {hosts} | {now * 1000:.1f} | {grow} | {was} | {ratio} | {plan:.1f} | {plan_grow} |")
        previous = (hosts, now, before, plan)
    table = "\n".join(lines)
    print(table)
    biggest = rows[-1]
    met = biggest[1] < 1.0 and biggest[3] < 60
    print(f"target: {SIZES[-1]} hosts load < 1 s and plan < 60 s — {'met' if met else 'MISSED'}")
    if opts.write:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n## Large fleet inventories (benchmarks/inventory.py, {when})\n\nMachine: {machine}. Command: "
                f"`python benchmarks/inventory.py --runs {opts.runs} --write`. Each host has its own override, "
                "tls_dir, group and labels; `fleet plan` runs against engines that are not there, so every host "
                f"is unreachable and the figure is deploykit's own cost. Before the fix: {BASELINE_REV}'s "
                f"load_inventory (measured up to {BASELINE_MAX} hosts).\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
