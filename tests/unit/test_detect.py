"""detect: parsers read outputs recorded on real machines; probes get those outputs through their seams.

Where each fixture came from: tests/fixtures/gpu/SOURCE.md and tests/fixtures/host/SOURCE.md.
tests/fixtures/gpu/h200/ is recorded on a real H200 by scripts/device/record_gpu.sh; until it is there,
its tests skip.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pynvml
import pytest

from deploykit.seams.detect import (
    NVIDIA_SMI_COMPUTE_CAP_ARGS,
    NVIDIA_SMI_XML_ARGS,
    CpuInfo,
    cpu_from,
    cuda_version_from_int,
    detect_disk,
    detect_host,
    normalise_arch,
    parse_compute_caps_csv,
    parse_cpuinfo,
    parse_meminfo,
    parse_nvidia_smi_xml,
    probe_gpus,
    probe_nvidia_smi,
    probe_nvml,
)
from deploykit.seams.proc import Completed
from deploykit.values.host import HostProfile

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GPU = FIXTURES / "gpu"
HOST = FIXTURES / "host"
H200 = GPU / "h200"
MiB = 1024**2

T4_XML = GPU / "telegraf-tesla-t4.xml"
A100_XML = GPU / "telegraf-a100-sxm4-v12.xml"
TWO_GTX_1070_XML = GPU / "pai-2x-gtx-1070.xml"
DRIVER_NOT_LOADED = GPU / "nvidia-smi-driver-not-loaded.txt"
# nvidia-smi's exit code is the NVML return code; 9 is NVML_ERROR_DRIVER_NOT_LOADED.
DRIVER_NOT_LOADED_EXIT = pynvml.NVML_ERROR_DRIVER_NOT_LOADED


# --------------------------------------------------------------------------------------------------
# Seams: a pynvml stand-in that replays a recording, and a runner that replays recorded outputs.


def nvml_replaying(recording: Mapping[str, Any]) -> tuple[ModuleType, list[str]]:
    """A module shaped like pynvml answering from nvml.json (scripts/device/record_gpu.sh writes it).

    A recorded ``{"nvml_error": code}`` is raised as the real pynvml error for that code. Returns the
    module and the list of calls made on it.
    """
    calls: list[str] = []
    devices: Sequence[Mapping[str, Any]] = recording.get("devices", [])

    def answer(call: str, value: Any) -> Any:
        calls.append(call)
        if isinstance(value, Mapping) and "nvml_error" in value:
            raise pynvml.NVMLError(value["nvml_error"])
        return value

    def per_device(call: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[int], Any]:
        return lambda handle: convert(answer(call, devices[handle][call]))

    module = ModuleType("recorded_pynvml")
    fields: dict[str, Any] = {
        "NVMLError": pynvml.NVMLError,
        "nvmlInit": lambda: answer("nvmlInit", recording.get("nvmlInit")),
        "nvmlShutdown": lambda: answer("nvmlShutdown", None),
        "nvmlSystemGetDriverVersion": lambda: answer(
            "nvmlSystemGetDriverVersion", recording["nvmlSystemGetDriverVersion"]
        ),
        "nvmlSystemGetCudaDriverVersion": lambda: answer(
            "nvmlSystemGetCudaDriverVersion", recording["nvmlSystemGetCudaDriverVersion"]
        ),
        "nvmlDeviceGetCount": lambda: answer("nvmlDeviceGetCount", len(devices)),
        "nvmlDeviceGetHandleByIndex": lambda index: answer("nvmlDeviceGetHandleByIndex", index),
        "nvmlDeviceGetName": per_device("nvmlDeviceGetName"),
        "nvmlDeviceGetUUID": per_device("nvmlDeviceGetUUID"),
        "nvmlDeviceGetMemoryInfo": per_device("nvmlDeviceGetMemoryInfo", lambda m: SimpleNamespace(**m)),
        "nvmlDeviceGetCudaComputeCapability": per_device("nvmlDeviceGetCudaComputeCapability", tuple),
    }
    for name, value in fields.items():
        setattr(module, name, value)
    return module, calls


def nvml_failing(code: int) -> ModuleType:
    return nvml_replaying({"nvmlInit": {"nvml_error": code}})[0]


def nvml_recording_of_capture(xml_text: str) -> dict[str, Any]:
    """What NVML answers for the cards in an ``nvidia-smi -q -x`` capture, in nvml.json's shape.

    Both read the same driver, so the NVML path must report what the capture says. A -q -x document has
    no compute capability (and old ones no CUDA version): for those the replay answers NOT_SUPPORTED, as
    a driver that cannot say does.
    """
    not_supported = {"nvml_error": pynvml.NVML_ERROR_NOT_SUPPORTED}
    root = ET.fromstring(xml_text)
    cuda = root.findtext("cuda_version")
    return {
        "nvmlSystemGetDriverVersion": root.findtext("driver_version"),
        "nvmlSystemGetCudaDriverVersion": (
            int(cuda.split(".")[0]) * 1000 + int(cuda.split(".")[1]) * 10 if cuda else not_supported
        ),
        "devices": [
            {
                "nvmlDeviceGetName": gpu.findtext("product_name"),
                "nvmlDeviceGetUUID": gpu.findtext("uuid"),
                "nvmlDeviceGetMemoryInfo": {
                    key: int(str(gpu.findtext(f"fb_memory_usage/{key}")).split()[0]) * MiB
                    for key in ("total", "free", "used")
                },
                "nvmlDeviceGetCudaComputeCapability": not_supported,
            }
            for gpu in root.findall("gpu")
        ],
    }


def runner_replaying(outputs: Mapping[tuple[str, ...], Completed]) -> Callable[[Sequence[str]], Completed]:
    """A Runner answering recorded commands; any other command did not run (as when it is not installed)."""

    def run(args: Sequence[str]) -> Completed:
        key = tuple(args)
        return outputs.get(key, Completed(key, 127, "", f"{args[0]}: command not found"))

    return run


def recorded(args: Sequence[str], path: Path, returncode: int = 0) -> tuple[tuple[str, ...], Completed]:
    return tuple(args), Completed(tuple(args), returncode, path.read_text(), "")


# --------------------------------------------------------------------------------------------------
# nvidia-smi -q -x, one capture each


def test_tesla_t4_capture() -> None:
    (gpu,) = parse_nvidia_smi_xml(T4_XML.read_text())
    assert gpu.index == 0
    assert gpu.name == "Tesla T4"
    assert gpu.uuid == "GPU-d37e67a5-91dd-3774-a5cb-99096249601a"
    assert gpu.memory_total_bytes == 15360 * MiB
    assert gpu.memory_free_bytes == 13939 * MiB
    assert gpu.driver_version == "515.105.01"
    assert gpu.cuda_version == "11.7"
    assert gpu.compute_capability is None  # not in a -q -x document


def test_a100_capture_reads_the_whole_card_not_its_mig_slices() -> None:
    (gpu,) = parse_nvidia_smi_xml(A100_XML.read_text())
    assert gpu.name == "NVIDIA A100-SXM4-80GB"
    assert gpu.uuid == "GPU-513536b6-7d19-9063-b049-1e69664bb298"
    # Each of the four MIG slices listed before it says 19968 MiB total / 19955 MiB free.
    assert gpu.memory_total_bytes == 81920 * MiB
    assert gpu.memory_free_bytes == 80999 * MiB
    assert (gpu.driver_version, gpu.cuda_version) == ("535.54.03", "12.2")
    # The card's minor_number is 1; its index is its place in nvidia-smi's (PCI bus) order.
    assert gpu.index == 0


def test_two_gpu_capture_keeps_nvidia_smi_order() -> None:
    gpus = parse_nvidia_smi_xml(TWO_GTX_1070_XML.read_text())
    assert [(g.index, g.uuid) for g in gpus] == [
        (0, "GPU-e511a7b2-f9d5-ba47-9b98-853732ca6c1b"),
        (1, "GPU-28daffaf-8abe-aaf8-c298-4bd13aecb5e6"),
    ]
    assert [g.name for g in gpus] == ["GeForce GTX 1070", "GeForce GTX 1070"]
    assert [g.memory_total_bytes for g in gpus] == [8112 * MiB, 8114 * MiB]
    assert [g.memory_free_bytes for g in gpus] == [6084 * MiB, 4057 * MiB]
    # Driver 384 printed no <cuda_version> at all.
    assert {(g.driver_version, g.cuda_version) for g in gpus} == {("384.66", None)}


def test_driver_failure_text_is_not_a_document() -> None:
    with pytest.raises(ValueError, match="not XML"):
        parse_nvidia_smi_xml(DRIVER_NOT_LOADED.read_text())


def test_query_gpu_csv_without_compute_cap_gives_no_capabilities() -> None:
    # A real --query-gpu CSV with a header and "[N/A]" cells, but no index/compute_cap columns.
    assert parse_compute_caps_csv((GPU / "netdata-tesla-p100-query-gpu.csv").read_text()) == {}


# --------------------------------------------------------------------------------------------------
# NVML first, nvidia-smi second, and the reasons when neither answers


@pytest.mark.parametrize("capture", [T4_XML, TWO_GTX_1070_XML], ids=["t4", "2x-gtx-1070"])
def test_nvml_reports_what_nvidia_smi_reports_for_the_same_cards(capture: Path) -> None:
    nvml, calls = nvml_replaying(nvml_recording_of_capture(capture.read_text()))
    gpus, error = probe_nvml(nvml)
    assert error is None
    assert gpus == parse_nvidia_smi_xml(capture.read_text())
    assert calls[0] == "nvmlInit" and calls[-1] == "nvmlShutdown"


def test_nvml_is_shut_down_when_a_device_read_fails() -> None:
    recording = nvml_recording_of_capture(T4_XML.read_text())
    recording["devices"][0]["nvmlDeviceGetMemoryInfo"] = {"nvml_error": pynvml.NVML_ERROR_GPU_IS_LOST}
    nvml, calls = nvml_replaying(recording)
    gpus, error = probe_nvml(nvml)
    assert gpus is None
    assert error is not None and "GPU is lost" in error
    assert calls[-1] == "nvmlShutdown"


def test_nvml_failing_falls_back_to_nvidia_smi() -> None:
    runner = runner_replaying(dict([recorded(NVIDIA_SMI_XML_ARGS, T4_XML)]))
    probe = probe_gpus(runner=runner, nvml=nvml_failing(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert probe.source == "nvidia-smi"
    assert probe.gpus == parse_nvidia_smi_xml(T4_XML.read_text())
    assert probe.error == "NVML: Driver Not Loaded"


def test_driver_not_loaded_is_a_cpu_host_that_says_why(tmp_path: Path) -> None:
    runner = runner_replaying(dict([recorded(NVIDIA_SMI_XML_ARGS, DRIVER_NOT_LOADED, DRIVER_NOT_LOADED_EXIT)]))
    host = detect_host(model_cache=tmp_path, runner=runner, nvml=nvml_failing(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert host.gpus == ()
    assert host.gpu_probe == "none"
    assert host.gpu_probe_error is not None
    assert "NVML: Driver Not Loaded" in host.gpu_probe_error
    driver_message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
    assert f"nvidia-smi: exit 9: {driver_message}" in host.gpu_probe_error


def test_missing_pynvml_module_is_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    gpus, error = probe_nvml(None)
    assert gpus is None
    assert error is not None and "nvidia-ml-py" in error


def test_cuda_driver_version_as_people_write_it() -> None:
    versions = [cuda_version_from_int(v) for v in (11070, 12020, 12040, 13010)]
    assert versions == ["11.7", "12.2", "12.4", "13.1"]


# --------------------------------------------------------------------------------------------------
# CPU, memory, disk


def test_cpuinfo_of_this_machine() -> None:
    info = parse_cpuinfo((HOST / "cpuinfo-x86_64-this-machine.txt").read_text())
    assert info == CpuInfo(
        model="Intel(R) Xeon(R) Processor",
        logical_cores=2,
        physical_cores=2,
        flags=("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"),
    )


def test_cpuinfo_of_an_arm64_server_without_topology() -> None:
    info = parse_cpuinfo((HOST / "cpuinfo-aarch64-scaleway.txt").read_text())
    assert info == CpuInfo(model=None, logical_cores=2, physical_cores=None, flags=("neon",))
    cpu = cpu_from(info, arch="aarch64", usable_cores=2)
    assert (cpu.physical_cores, cpu.logical_cores, cpu.flags) == (2, 2, ("neon",))


def test_cores_are_limited_to_the_ones_this_process_may_use() -> None:
    info = CpuInfo(model="x", logical_cores=64, physical_cores=32, flags=())
    cpu = cpu_from(info, arch="x86_64", usable_cores=8)
    assert (cpu.physical_cores, cpu.logical_cores) == (4, 8)


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64")],
)
def test_arch_names(machine: str, arch: str) -> None:
    assert normalise_arch(machine) == arch


def test_meminfo_of_this_machine() -> None:
    info = parse_meminfo((HOST / "meminfo-this-machine.txt").read_text())
    assert info.total_bytes == 24684084 * 1024
    assert info.available_bytes == 24055796 * 1024


def test_meminfo_without_memtotal_is_refused() -> None:
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo((HOST / "cpuinfo-x86_64-this-machine.txt").read_text())


def test_disk_is_measured_at_the_nearest_existing_parent(tmp_path: Path) -> None:
    cache = tmp_path / "not" / "yet" / "models"
    disk = detect_disk(cache)
    assert disk is not None
    assert disk.path == str(cache)
    assert abs(disk.free_bytes - shutil.disk_usage(tmp_path).free) < 256 * MiB
    assert not cache.exists()  # measuring does not create it


# --------------------------------------------------------------------------------------------------
# For real, on this machine


def test_detect_host_for_real(tmp_path: Path) -> None:
    environ_before = dict(os.environ)
    host = detect_host(model_cache=tmp_path / "models")
    assert dict(os.environ) == environ_before

    assert host.source == "detected"
    assert host.name == socket.gethostname()
    assert host.cpu.arch == normalise_arch(platform.machine())
    assert host.cpu.logical_cores == len(os.sched_getaffinity(0))
    assert 1 <= host.cpu.physical_cores <= host.cpu.logical_cores
    assert host.memory.total_bytes == parse_meminfo(Path("/proc/meminfo").read_text()).total_bytes
    assert host.disk is not None and host.disk.free_bytes > 0
    # What `detect --json` prints must load back as the same host (`--host FILE`).
    assert HostProfile.model_validate_json(host.model_dump_json()) == host

    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        assert host.gpus == ()
        assert host.gpu_probe == "none"
        assert host.gpu_probe_error is not None
        assert host.gpu_probe_error.startswith("NVML: ")
        assert "nvidia-smi: exit 127" in host.gpu_probe_error


# --------------------------------------------------------------------------------------------------
# The H200 recording (scripts/device/record_gpu.sh); skipped until it is in tests/fixtures/gpu/h200/


def h200_file(name: str) -> Path:
    path = H200 / name
    if not path.is_file():
        pytest.skip(f"{path.relative_to(FIXTURES)} not recorded yet (scripts/device/record_gpu.sh)")
    return path


def test_h200_nvml_recording_replays() -> None:
    recording = json.loads(h200_file("nvml.json").read_text())
    nvml, calls = nvml_replaying(recording)
    gpus, error = probe_nvml(nvml)
    assert error is None and gpus
    assert calls[-1] == "nvmlShutdown"
    for gpu, device in zip(gpus, recording["devices"], strict=True):
        assert "H200" in gpu.name
        assert gpu.name == device["nvmlDeviceGetName"]
        assert gpu.uuid == device["nvmlDeviceGetUUID"]
        assert gpu.memory_total_bytes == device["nvmlDeviceGetMemoryInfo"]["total"]
        assert gpu.memory_free_bytes == device["nvmlDeviceGetMemoryInfo"]["free"]
        assert gpu.compute_capability == "{}.{}".format(*device["nvmlDeviceGetCudaComputeCapability"])
        assert gpu.driver_version == recording["nvmlSystemGetDriverVersion"]
        assert gpu.cuda_version == cuda_version_from_int(recording["nvmlSystemGetCudaDriverVersion"])


def test_h200_nvidia_smi_recording_agrees_with_nvml() -> None:
    nvml_gpus, _ = probe_nvml(nvml_replaying(json.loads(h200_file("nvml.json").read_text()))[0])
    runner = runner_replaying(
        dict(
            [
                recorded(NVIDIA_SMI_XML_ARGS, h200_file("nvidia-smi-q.xml")),
                recorded(NVIDIA_SMI_COMPUTE_CAP_ARGS, h200_file("query-gpu.csv")),
            ]
        )
    )
    smi_gpus, error = probe_nvidia_smi(runner)
    assert error is None and smi_gpus and nvml_gpus
    for smi, nvml in zip(smi_gpus, nvml_gpus, strict=True):
        assert (smi.index, smi.name, smi.uuid) == (nvml.index, nvml.name, nvml.uuid)
        assert (smi.driver_version, smi.cuda_version) == (nvml.driver_version, nvml.cuda_version)
        assert smi.compute_capability == nvml.compute_capability
        # nvidia-smi rounds to MiB; both read the same framebuffer.
        assert abs(smi.memory_total_bytes - nvml.memory_total_bytes) < 64 * MiB
