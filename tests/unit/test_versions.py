"""versions.toml is the one place that names each pinned version: settings, doctor, the provisioning
scripts and README.md's table all follow it."""

from __future__ import annotations

import re
import subprocess

from deploykit.backends import named
from deploykit.config.settings import Images
from deploykit.values.versions import parse, pinned
from tests.unit.conftest import ROOT

TOML = ROOT / "deploykit" / "catalog" / "versions.toml"
LLAMA, VLLM = named("llamacpp"), named("vllm")


def test_image_defaults_come_from_versions_toml() -> None:
    v = pinned()
    images = Images()
    build, vllm_version = v.get("llamacpp", "build"), v.get("vllm", "version")
    assert images.llama_server == f"ghcr.io/ggml-org/llama.cpp:server-b{build}"
    assert images.llama_server_cuda == LLAMA.gpu_image(v).image
    assert images.vllm == VLLM.gpu_image(v).image == f"vllm/vllm-openai:v{vllm_version}"
    assert images.vllm_cpu.endswith(f":v{vllm_version}")
    assert images.open_webui == v.open_webui
    # Every backend's image on every device is a field of Images, under the key the backend names.
    for backend in (LLAMA, VLLM):
        for device, image in backend.images(v).items():
            assert images.ref(backend.image_key(device)) == image.default
    assert images.caddy == v.get("caddy", "image") == f"caddy:{v.get('caddy', 'version')}"


def test_gpu_images_are_the_release_lines_the_cpu_path_tests() -> None:
    v = pinned()
    llama_cuda, vllm_cuda = LLAMA.gpu_image(v), VLLM.gpu_image(v)
    # The provisioned CPU image's llama-server prints "version: 0.7.0 (build 11669, ...)".
    assert v.get("llamacpp", "debian").split(":")[-1].startswith(v.get("llamacpp", "version") + "+")
    assert f"b{v.get('llamacpp', 'build')}" in llama_cuda.image
    assert vllm_cuda.fallback is not None and vllm_cuda.fallback.startswith(vllm_cuda.image)
    assert vllm_cuda.cuda == (13, 0) and llama_cuda.cuda == (12, 8)


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
    llama_cuda, vllm_cuda = LLAMA.gpu_image(v), VLLM.gpu_image(v)
    rows = [
        f"| llama.cpp, CPU | `{v.get('llamacpp', 'image')}` | — |",
        f"| llama.cpp, CUDA | `{llama_cuda.image}` | CUDA {llama_cuda.cuda_text} (driver ≥ {llama_cuda.driver}) |",
        f"| vLLM, CUDA | `{vllm_cuda.image}` | CUDA {vllm_cuda.cuda_text} (driver ≥ {vllm_cuda.driver}); "
        f"older drivers: `{vllm_cuda.fallback}` |",
        f"| vLLM, CPU | `{v.get('vllm', 'image_cpu')}` | — |",
        f"| Open WebUI | `{v.open_webui}` | — |",
        f"| Caddy (HTTPS, `--tls`) | `{v.get('caddy', 'image')}` | — |",
    ]
    for row in rows:
        assert row in readme, row
    debian, build = v.get("llamacpp", "debian"), v.get("llamacpp", "build")
    assert f"llama.cpp-tools` {debian}" in readme and f"build {build}" in readme


def test_provisioning_scripts_read_versions_instead_of_naming_them() -> None:
    v = pinned()
    named_here = {
        v.get("vllm", "version"),
        v.get("open_webui", "version"),
        v.get("open_webui", "upgrade_from"),
        v.get("torch", "cpu"),
        v.get("llamacpp", "debian"),
        v.get("llamacpp", "build"),
        v.get("caddy", "image"),
    }
    for script in sorted((ROOT / "scripts" / "provision").glob("*.sh")):
        text = script.read_text(encoding="utf-8")
        assert not [n for n in named_here if n in text], script.name
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
    assert out == [v.get("vllm", "version"), v.get("torch", "cpu"), v.get("llamacpp", "debian")]
