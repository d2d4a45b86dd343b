"""The pinned versions, read from ``deploykit/catalog/versions.toml`` — the one place that names them.

Settings take their image defaults from here, ``doctor`` its driver minimums, the provisioning scripts
their package versions, and README.md's table is checked against it by a unit test.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class GpuImage:
    """A CUDA image and what the host's driver must support to start it."""

    image: str
    cuda: tuple[int, int]
    driver: str
    fallback: str | None = None  # an image of the same release for older drivers, when one exists

    @property
    def cuda_text(self) -> str:
        return ".".join(map(str, self.cuda))


@dataclass(frozen=True)
class Versions:
    """Every table of versions.toml, its values as text with ``{version}`` and ``{build}`` filled in from the
    same table. A backend reads its own table (``Backend.images``, ``Backend.gpu_image``)."""

    tables: dict[str, dict[str, str]]

    def get(self, table: str, key: str) -> str:
        return self.tables[table][key]

    def gpu_image(self, table: str, image: str, fallback: str | None = None) -> GpuImage:
        """The CUDA image under ``image`` in ``table``, with the table's CUDA and driver minimum."""
        t = self.tables[table]
        return GpuImage(t[image], _cuda(t["cuda"]), t["driver"], t[fallback] if fallback else None)

    @property
    def open_webui(self) -> str:
        return self.get("open_webui", "image")


def _cuda(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def parse(text: str) -> Versions:
    tables: dict[str, dict[str, str]] = {}
    for name, table in tomllib.loads(text).items():
        fill = {key: table[key] for key in ("version", "build") if key in table}
        tables[name] = {key: str(value).format(**fill) for key, value in table.items()}
    return Versions(tables)


@cache
def pinned() -> Versions:
    return parse(resources.files("deploykit").joinpath("catalog", "versions.toml").read_text(encoding="utf-8"))
