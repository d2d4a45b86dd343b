"""A container's memory as `status` and the benchmarks count it: recorded outputs of a real engine.

The recordings (tests/fixtures/memory_stats/) are Docker 20.10's ``top -o pid,rss`` and ``stats`` (cgroup v1) of
the router container of a two-model llama.cpp stack (benchmarks/multimodel.py's, 2026-12-03), whose GGUF
files an earlier container had read first (so their page cache is charged to that one, not to this cgroup),
and of its Open WebUI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploykit.seams.compose import processes_rss_bytes, resident_bytes

FIXTURES = Path(__file__).parents[1] / "fixtures" / "memory_stats"
MiB = 1 << 20
PLANNED_ROUTER = 1132 * MiB  # plan.json of that stack: 534 + 579 + the router's 19


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_processes_rss_counts_the_mapped_weights_the_cgroup_is_not_charged_for() -> None:
    top, stats = recorded("top-router"), recorded("cgroup1-router")
    held = processes_rss_bytes(top)
    assert held == sum(int(rss) for _, rss in top["Processes"]) * 1024
    charged = resident_bytes(stats)
    assert charged is not None and held - charged > 200 * MiB  # the two models' weights, ~230 MiB
    assert abs(PLANNED_ROUTER - held) / held < 0.15


@pytest.mark.parametrize("service", ["router", "open-webui"])
def test_cgroup_figure_is_anonymous_plus_mapped_file_pages(service: str) -> None:
    stats = recorded(f"cgroup1-{service}")
    counters = stats["stats"]
    assert resident_bytes(stats) == counters["rss"] + counters["mapped_file"]


@pytest.mark.parametrize(
    "top", [{}, {"Titles": ["PID"], "Processes": [["1"]]}, {"Titles": ["PID", "RSS"], "Processes": [["1", "-"]]}]
)
def test_a_listing_without_rss_figures_is_none(top: dict[str, Any]) -> None:
    assert processes_rss_bytes(top) is None


def test_no_usage_reported_is_none() -> None:
    assert resident_bytes({}) is None
