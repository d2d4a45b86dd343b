"""versions.toml is the one place that names each pinned version: settings, doctor, the provisioning
scripts and README.md's table all follow it."""

from __future__ import annotations

import re
import subprocess

from deploykit.settings import Images
from deploykit.versions import parse, pinned
from tests.unit.conftest import ROOT

TOML = ROOT / "deploykit" / "catalog" / "versions.toml"


def test_image_defaults_come_from_versions_toml() -> None:
    v = pinned()
    images = Images()
    assert images.llama_server == v.llama_server == f"ghcr.io/ggml-org/llama.cpp:server-b{v.llamacpp_build}"
    assert images.llama_server_cuda == v.llama_server_cuda.image
    assert images.vllm == v.vllm.image == f"vllm/vllm-openai:v{v.vllm_version}"
    assert images.vllm_cpu == v.vllm_cpu and images.vllm_cpu.endswith(f":v{v.vllm_version}")
    assert images.open_webui == v.open_webui
    assert images.caddy == v.caddy == f"caddy:{v.caddy_version}"


def test_gpu_images_are_the_release_lines_the_cpu_path_tests() -> None:
    v = pinned()
    # The provisioned CPU image's llama-server prints "version: 0.7.0 (build 11669, ...)".
    assert v.llamacpp_debian.split(":")[-1].startswith(v.llamacpp_version + "+")
    assert f"b{v.llamacpp_build}" in v.llama_server_cuda.image
    assert v.vllm.fallback is not None and v.vllm.fallback.startswith(v.vllm.image)
    assert v.vllm.cuda == (13, 0) and v.llama_server_cuda.cuda == (12, 8)


def test_a_version_is_written_once() -> None:
    text = TOML.read_text(encoding="utf-8")
    values = re.findall(r'^(?:version|build) = "?([^"\n]+)"?$', text, flags=re.M)
    for value in values:
        lines = [line for line in text.splitlines() if value in line and not line.startswith("#")]
        assert len(lines) == 1, (value, lines)
    assert parse(text) == pinned()


def test_readme_table_matches_versions_toml() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    v = pinned()
    rows = [
        f"| llama.cpp, CPU | `{v.llama_server}` | — |",
        f"| llama.cpp, CUDA | `{v.llama_server_cuda.image}` | CUDA {v.llama_server_cuda.cuda_text} "
        f"(driver ≥ {v.llama_server_cuda.driver}) |",
        f"| vLLM, CUDA | `{v.vllm.image}` | CUDA {v.vllm.cuda_text} (driver ≥ {v.vllm.driver}); "
        f"older drivers: `{v.vllm.fallback}` |",
        f"| vLLM, CPU | `{v.vllm_cpu}` | — |",
        f"| Open WebUI | `{v.open_webui}` | — |",
        f"| Caddy (HTTPS, `--tls`) | `{v.caddy}` | — |",
    ]
    for row in rows:
        assert row in readme, row
    assert f"llama.cpp-tools` {v.llamacpp_debian}" in readme and f"build {v.llamacpp_build}" in readme


def test_provisioning_scripts_read_versions_instead_of_naming_them() -> None:
    v = pinned()
    named = {v.vllm_version, v.open_webui_version, v.torch_cpu, v.llamacpp_debian, str(v.llamacpp_build), v.caddy}
    for script in sorted((ROOT / "scripts" / "provision").glob("*.sh")):
        text = script.read_text(encoding="utf-8")
        assert not [n for n in named if n in text], script.name
    out = subprocess.run(
        [
            "bash",
            "-c",
            ". scripts/provision/lib.sh && pinned vllm.version && pinned torch.cpu && pinned llamacpp.debian",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [v.vllm_version, v.torch_cpu, v.llamacpp_debian]
