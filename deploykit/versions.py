"""The pinned versions, read from ``deploykit/catalog/versions.toml`` — the one place that names them.

Settings take their image defaults from here, ``doctor`` its driver minimums, the provisioning scripts
their package versions, and README.md's table is checked against it by a unit test.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

Backend = Literal["vllm", "llamacpp"]


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
    llamacpp_version: str
    llamacpp_build: int
    llamacpp_debian: str
    llama_server: str
    llama_server_cuda: GpuImage
    vllm_version: str
    vllm: GpuImage
    vllm_cpu: str
    open_webui_version: str
    open_webui: str
    caddy_version: str
    caddy: str
    torch_cpu: str

    def gpu_image(self, backend: Backend) -> GpuImage:
        return self.vllm if backend == "vllm" else self.llama_server_cuda


def _cuda(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def parse(text: str) -> Versions:
    data = tomllib.loads(text)
    llama, vllm, webui, caddy = data["llamacpp"], data["vllm"], data["open_webui"], data["caddy"]
    fill_llama = {"version": llama["version"], "build": llama["build"]}
    fill_vllm = {"version": vllm["version"]}
    return Versions(
        llamacpp_version=llama["version"],
        llamacpp_build=int(llama["build"]),
        llamacpp_debian=llama["debian"].format(**fill_llama),
        llama_server=llama["image"].format(**fill_llama),
        llama_server_cuda=GpuImage(llama["image_cuda"].format(**fill_llama), _cuda(llama["cuda"]), llama["driver"]),
        vllm_version=vllm["version"],
        vllm=GpuImage(
            vllm["image"].format(**fill_vllm),
            _cuda(vllm["cuda"]),
            vllm["driver"],
            vllm["image_older_cuda"].format(**fill_vllm),
        ),
        vllm_cpu=vllm["image_cpu"].format(**fill_vllm),
        open_webui_version=webui["version"],
        open_webui=webui["image"].format(version=webui["version"]),
        caddy_version=caddy["version"],
        caddy=caddy["image"].format(version=caddy["version"]),
        torch_cpu=data["torch"]["cpu"],
    )


@cache
def pinned() -> Versions:
    return parse(resources.files("deploykit").joinpath("catalog", "versions.toml").read_text(encoding="utf-8"))
