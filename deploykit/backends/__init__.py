"""The inference servers deploykit can plan for, one module each, in the order the planner prefers them.

Adding one: a module here with a ``Backend`` subclass (deploykit.backends.base), its instance in
``BACKENDS``, its service templates (``templates/services/NAME.yaml.j2``, ``templates/kubernetes/NAME.yaml.j2``)
and its pinned image in ``catalog/versions.toml``.
"""

from __future__ import annotations

from deploykit.backends.base import Backend
from deploykit.backends.llamacpp import LLAMACPP
from deploykit.backends.vllm import VLLM

# In order of preference: the first that fits a GPU wins (vLLM in FP16, then llama.cpp's GGUF).
BACKENDS: tuple[Backend, ...] = (VLLM, LLAMACPP)
# What serves a model when nothing else does: llama.cpp's GGUF on the CPU. Any other backend runs on the
# CPU only when a profile or --backend asks for it.
CPU_FALLBACK: Backend = LLAMACPP


def on_gpu(wanted: str | None) -> tuple[Backend, ...]:
    """The backends that try a host's GPU, in order of preference: every one, or the one asked for."""
    return tuple(b for b in BACKENDS if wanted in (None, b.name))


def on_cpu(wanted: str | None, has_gpu: bool) -> tuple[tuple[Backend, ...], Backend | None]:
    """(the backends asked to try the CPU, the fallback that serves what is left, if it may).

    A backend other than the fallback runs on the CPU only when asked for on a host without a GPU (the
    cpu-vllm profile); a host with a GPU falls back to the CPU only when no other backend was asked for.
    """
    if has_gpu:
        return (), CPU_FALLBACK if wanted in (None, CPU_FALLBACK.name) else None
    return tuple(b for b in BACKENDS if b is not CPU_FALLBACK and b.name == wanted), CPU_FALLBACK


def names() -> tuple[str, ...]:
    return tuple(b.name for b in BACKENDS)


def named(name: str) -> Backend:
    """The backend a plan names; a name deploykit does not know is a ValueError saying which it knows."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ValueError(expected())


def expected() -> str:
    """The known names as pydantic says what a field expects: "Input should be 'vllm' or 'llamacpp'"."""
    quoted = [f"'{n}'" for n in names()]
    return "Input should be " + (", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0])


__all__ = ["BACKENDS", "CPU_FALLBACK", "Backend", "expected", "named", "names"]
