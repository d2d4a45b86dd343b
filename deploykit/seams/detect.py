"""Find out what this machine has: NVIDIA GPUs, CPU, memory and the disk the models go on.

Each probe is a thin reader around a pure parser (text in, data out), so tests feed the parsers outputs
recorded on real machines. Nothing here writes ``os.environ`` and nothing raises on a machine without an
NVIDIA GPU: no GPU is a normal answer, and why none was found is kept in ``gpu_probe_error``.

GPUs come from NVML first (the ``pynvml`` module of nvidia-ml-py, loaded only when asked for) and from
``nvidia-smi -q -x`` when NVML cannot answer. The Docker Engine is not probed here; the caller passes in
what the engine module found.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import re
import shutil
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from deploykit.seams.proc import Completed, Runner, run_cmd
from deploykit.values.host import Cpu, Disk, DockerEngine, Gpu, HostProfile, Memory
from deploykit.values.units import MiB

KiB = 1024

NVIDIA_SMI_XML_ARGS = ("nvidia-smi", "-q", "-x")
# Asked separately: compute capability is not in the -q -x document, and drivers older than the field
# refuse the whole query, which must not cost us the GPUs the XML already gave.
NVIDIA_SMI_COMPUTE_CAP_ARGS = ("nvidia-smi", "--query-gpu=index,compute_cap", "--format=csv,noheader")

# The SIMD extensions the CPU backends care about, in the order they are reported.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon")
# aarch64 kernels call NEON "asimd"; report one name for one thing.
_FLAG_ALIASES = {"asimd": "neon"}

# What nvidia-smi writes where it has no value.
_NO_VALUE = {"", "N/A", "[N/A]", "Not Found", "Not Supported"}

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# GPUs


@dataclass(frozen=True)
class GpuProbe:
    """The GPUs found, which source answered ("nvml", "nvidia-smi" or "none") and why others failed."""

    gpus: tuple[Gpu, ...]
    source: str
    error: str | None


def probe_gpus(*, runner: Runner = run_cmd, nvml: ModuleType | None = None) -> GpuProbe:
    """Ask NVML, then nvidia-smi; never raises. ``nvml`` stands in for the pynvml module in tests."""
    gpus, nvml_error = probe_nvml(nvml)
    if gpus is not None:
        return GpuProbe(gpus, "nvml", None)
    gpus, smi_error = probe_nvidia_smi(runner)
    if gpus is not None:
        # Keep NVML's reason: a host where only nvidia-smi works is worth knowing about.
        return GpuProbe(gpus, "nvidia-smi", nvml_error)
    return GpuProbe((), "none", "; ".join(e for e in (nvml_error, smi_error) if e) or None)


def probe_nvml(nvml: ModuleType | None = None) -> tuple[tuple[Gpu, ...] | None, str | None]:
    """The GPUs NVML sees, or None and the reason NVML could not be used."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return None, "NVML: the pynvml module (package nvidia-ml-py) is not installed"
    nvml_error = _nvml_error_type(nvml)
    try:
        return read_nvml(nvml), None
    except (nvml_error, OSError, ValueError) as exc:  # ValueError: a value the Gpu model rejects
        return None, f"NVML: {_describe(exc)}"


def read_nvml(nvml: ModuleType) -> tuple[Gpu, ...]:
    """Every GPU in NVML index order; raises the module's NVMLError when NVML itself is unusable."""
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = _optional(nvml, lambda: cuda_version_from_int(nvml.nvmlSystemGetCudaDriverVersion()))
        count: int = nvml.nvmlDeviceGetCount()
        return tuple(_nvml_gpu(nvml, index, driver, cuda) for index in range(count))
    finally:
        with contextlib.suppress(_nvml_error_type(nvml)):
            nvml.nvmlShutdown()


def _nvml_gpu(nvml: ModuleType, index: int, driver: str, cuda: str | None) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return Gpu(
        index=index,
        uuid=_optional(nvml, lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        compute_capability=_optional(nvml, lambda: "{}.{}".format(*nvml.nvmlDeviceGetCudaComputeCapability(handle))),
        driver_version=driver,
        cuda_version=cuda,
    )


def cuda_version_from_int(version: int) -> str:
    """NVML's CUDA driver version as people write it: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _nvml_error_type(nvml: ModuleType) -> type[Exception]:
    error_type = getattr(nvml, "NVMLError", None)
    return error_type if isinstance(error_type, type) and issubclass(error_type, Exception) else Exception


def _optional(nvml: ModuleType, read: Callable[[], _T]) -> _T | None:
    """A value some drivers or cards do not report (NOT_SUPPORTED): None instead of losing the GPU."""
    try:
        return read()
    except _nvml_error_type(nvml):
        return None


def _text(value: str | bytes) -> str:
    # pynvml before 11.x returned bytes.
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_nvidia_smi(runner: Runner) -> tuple[tuple[Gpu, ...] | None, str | None]:
    """The GPUs ``nvidia-smi -q -x`` lists, with compute capability where the driver can say it."""
    report = _run(runner, NVIDIA_SMI_XML_ARGS)
    if not report.ok:
        return None, f"nvidia-smi: {describe_failure(report)}"
    try:
        gpus = parse_nvidia_smi_xml(report.stdout)
    except ValueError as exc:
        return None, f"nvidia-smi: unreadable -q -x output: {exc}"
    caps = _run(runner, NVIDIA_SMI_COMPUTE_CAP_ARGS)
    if caps.ok:
        gpus = with_compute_capabilities(gpus, parse_compute_caps_csv(caps.stdout))
    return gpus, None


def _run(runner: Runner, args: Sequence[str]) -> Completed:
    try:
        return runner(args)
    except OSError as exc:  # e.g. the binary exists but may not be executed
        return Completed(tuple(args), 126, "", _describe(exc))


def describe_failure(result: Completed) -> str:
    """Exit code and the first line the program printed; nvidia-smi writes its errors to stdout."""
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
    first = next((line for line in lines if line), "no output")
    return f"exit {result.returncode}: {first}"


def parse_nvidia_smi_xml(text: str) -> tuple[Gpu, ...]:
    """GPUs from ``nvidia-smi -q -x``; raises ValueError for a document that is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from exc
    if root.tag != "nvidia_smi_log":
        raise ValueError(f"root element is <{root.tag}>, not <nvidia_smi_log>")
    driver = _xml_value(root, "driver_version")
    cuda = _xml_value(root, "cuda_version")
    # Document order is nvidia-smi's index order (PCI bus order), the numbering NVML, CUDA_VISIBLE_DEVICES
    # with PCI_BUS_ID and NVIDIA_VISIBLE_DEVICES use; minor_number is the /dev/nvidiaN number, which can
    # differ from it.
    return tuple(_xml_gpu(index, gpu, driver, cuda) for index, gpu in enumerate(root.findall("gpu")))


def _xml_gpu(index: int, gpu: ET.Element, driver: str | None, cuda: str | None) -> Gpu:
    name = _xml_value(gpu, "product_name")
    # Direct children only: under MIG each <mig_device> has its own fb_memory_usage, listed first.
    total = parse_mib(_xml_value(gpu, "fb_memory_usage/total"))
    if name is None or not total:
        raise ValueError(f"GPU {index} has no product_name or fb_memory_usage/total")
    return Gpu(
        index=index,
        uuid=_xml_value(gpu, "uuid"),
        name=name,
        memory_total_bytes=total,
        memory_free_bytes=parse_mib(_xml_value(gpu, "fb_memory_usage/free")),
        driver_version=driver,
        cuda_version=cuda,
    )


def _xml_value(element: ET.Element, path: str) -> str | None:
    found = element.find(path)
    text = (found.text or "").strip() if found is not None else ""
    return None if text in _NO_VALUE else text


def parse_mib(text: str | None) -> int | None:
    """Bytes in nvidia-smi's "15360 MiB"; None for anything else."""
    match = re.fullmatch(r"(\d+)\s*MiB", text or "")
    return int(match.group(1)) * MiB if match else None


def parse_compute_caps_csv(text: str) -> dict[int, str]:
    """``index, compute_cap`` rows -> {index: "major.minor"}; other lines ([N/A], errors) are skipped."""
    caps: dict[int, str] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+\.\d+)\s*", line)
        if match:
            caps[int(match.group(1))] = match.group(2)
    return caps


def with_compute_capabilities(gpus: Iterable[Gpu], caps: Mapping[int, str]) -> tuple[Gpu, ...]:
    return tuple(
        gpu.model_copy(update={"compute_capability": caps[gpu.index]}) if gpu.index in caps else gpu for gpu in gpus
    )


# --------------------------------------------------------------------------------------------------
# CPU


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPUs the kernel knows (not only those this process may use)."""

    model: str | None
    logical_cores: int
    physical_cores: int | None  # None where the kernel lists no physical id / core id (many arm boards)
    flags: tuple[str, ...]


def parse_cpuinfo(text: str) -> CpuInfo:
    blocks = _cpuinfo_blocks(text)
    processors = [block for block in blocks if "processor" in block]
    cores = {(b["physical id"], b["core id"]) for b in processors if "physical id" in b and "core id" in b}
    present: set[str] = set()
    for block in processors:
        for flag in (block.get("flags", "") + " " + block.get("Features", "")).split():
            present.add(_FLAG_ALIASES.get(flag, flag))
    return CpuInfo(
        model=_cpu_model(blocks),
        logical_cores=len(processors),
        physical_cores=len(cores) or None,
        flags=tuple(flag for flag in SIMD_FLAGS if flag in present),
    )


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
        elif ":" in line:
            key, _, value = line.partition(":")
            blocks[-1][key.strip()] = value.strip()
    return [block for block in blocks if block]


def _cpu_model(blocks: Sequence[Mapping[str, str]]) -> str | None:
    # x86 names the CPU per processor; arm boards may name the board ("Model") or SoC ("Hardware") once.
    for key in ("model name", "Model", "Hardware"):
        for block in blocks:
            if block.get(key):
                return block[key]
    return None


def normalise_arch(machine: str) -> str:
    """platform.machine() spellings -> the names images are published under."""
    lowered = machine.lower()
    if lowered in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if lowered in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    return lowered or "unknown"


def cpu_from(info: CpuInfo, *, arch: str, usable_cores: int) -> Cpu:
    """Combine cpuinfo with the cores this process may run on (its affinity mask: cpusets, taskset)."""
    logical = max(1, usable_cores)
    physical = info.physical_cores or logical
    if info.logical_cores > logical:
        # Only part of the machine is ours; assume our share of physical cores matches our share of threads.
        physical = round(physical * logical / info.logical_cores)
    return Cpu(
        model=info.model,
        arch=arch,
        physical_cores=max(1, min(physical, logical)),
        logical_cores=logical,
        flags=info.flags,
    )


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def detect_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> Cpu:
    info = parse_cpuinfo(_read_text(cpuinfo_path) or "")
    return cpu_from(info, arch=normalise_arch(platform.machine()), usable_cores=usable_cores())


# --------------------------------------------------------------------------------------------------
# Memory and disk


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int
    available_bytes: int | None  # MemAvailable exists since Linux 3.14


def parse_meminfo(text: str) -> MemInfo:
    """/proc/meminfo -> bytes; raises ValueError without a MemTotal line."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+):\s*(\d+)\s*kB", line.strip())
        if match:
            values[match.group(1)] = int(match.group(2)) * KiB
    if not values.get("MemTotal"):
        raise ValueError("no MemTotal line in meminfo")
    return MemInfo(values["MemTotal"], values.get("MemAvailable"))


def detect_memory(meminfo_path: Path = Path("/proc/meminfo")) -> Memory:
    try:
        info = parse_meminfo(_read_text(meminfo_path) or "")
    except ValueError:
        # No /proc (macOS, odd sandboxes): physical pages is the total; availability unknown.
        return Memory(total_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return Memory(total_bytes=info.total_bytes, available_bytes=info.available_bytes)


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing parent: the model cache need not exist before the first pull."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or os.sep)


def detect_disk(model_cache: Path) -> Disk | None:
    path = model_cache.expanduser().absolute()
    try:
        usage = shutil.disk_usage(nearest_existing(path))
    except OSError:
        return None
    return Disk(path=str(path), free_bytes=usage.free)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# The whole host


def detect_host(
    *,
    name: str = "auto",
    model_cache: Path,
    docker: DockerEngine | None = None,
    runner: Runner = run_cmd,
    nvml: ModuleType | None = None,
) -> HostProfile:
    """Probe this machine. ``runner`` and ``nvml`` are the seams tests replace with recorded outputs."""
    probe = probe_gpus(runner=runner, nvml=nvml)
    return HostProfile(
        name=(socket.gethostname() or "localhost") if name == "auto" else name,
        source="detected",
        cpu=detect_cpu(),
        memory=detect_memory(),
        gpus=probe.gpus,
        disk=detect_disk(model_cache),
        docker=docker,
        gpu_probe=probe.source,
        gpu_probe_error=probe.error,
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Network addresses (who can reach a port published on 0.0.0.0)


@dataclass(frozen=True)
class Address:
    interface: str
    ip: str


def parse_ip_addr_json(text: str) -> tuple[Address, ...]:
    """IPv4 addresses from ``ip -j -4 addr show``."""
    import json

    found = []
    for link in json.loads(text or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family", "inet") == "inet" and info.get("local"):
                found.append(Address(str(link.get("ifname", "?")), str(info["local"])))
    return tuple(found)


def host_addresses(runner: Runner = run_cmd) -> tuple[Address, ...]:
    """This machine's IPv4 addresses; the hostname's address when ``ip`` is not there (not Linux)."""
    result = runner(["ip", "-j", "-4", "addr", "show"], timeout=5)
    if result.ok:
        with contextlib.suppress(ValueError):
            return parse_ip_addr_json(result.stdout)
    try:
        return tuple(Address("?", ip) for ip in socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        return (Address("lo", "127.0.0.1"),)
