"""Hugging Face Hub access: model configs for planning, and weights for `up`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.values.errors import DownloadError, NotFoundError


def fetch_config(repo: str) -> tuple[dict[str, Any], int | None]:
    """config.json of ``repo`` and, where the hub knows it, the parameter count from safetensors."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        path = hf_hub_download(repo, "config.json")
    except RepositoryNotFoundError:
        raise NotFoundError(
            f"Hugging Face repository '{repo}' does not exist or is private.",
            "Check the id (org/name); for a gated model set HF_TOKEN.",
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DownloadError(
            f"cannot fetch config.json of '{repo}': {exc}.",
            "Check the network, or plan from a local directory with --model-file.",
        ) from None
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_json

    hint = f"The config.json of '{repo}' cannot be planned with; plan from a local directory with --model-file."
    what = "downloaded model config"
    config = load_json(read_text(Path(path), what, hint), Path(path), what, hint)
    params: int | None = None
    try:
        info = HfApi().model_info(repo)
        if info.safetensors is not None:
            params = int(info.safetensors.total)
    except (HfHubHTTPError, OSError, ValueError, AttributeError):
        params = None  # the estimate from config.json is close enough
    return config, params


def ensure_gguf(repo: str, filename: str, dest: Path) -> Path:
    """The GGUF file at ``dest`` (= cache/REPO/FILE), downloaded with progress if missing; resumes partials."""
    if dest.is_file():
        return dest
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = hf_hub_download(repo, filename, local_dir=str(dest.parent))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DownloadError(
            f"cannot download {filename} from {repo}: {str(exc).splitlines()[0][:200]}.",
            "Check the network (or HF_ENDPOINT for a mirror), or give a local file with --model-file.",
        ) from None
    return Path(path)


def ensure_snapshot(repo: str, dest: Path) -> Path:
    """A Hugging Face model directory for vLLM (config, tokenizer, safetensors) at ``dest``."""
    if (dest / "config.json").is_file() and any(dest.glob("*.safetensors")):
        return dest
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        snapshot_download(
            repo,
            local_dir=str(dest),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"],
        )
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DownloadError(
            f"cannot download {repo}: {str(exc).splitlines()[0][:200]}.",
            "Check the network (or HF_ENDPOINT for a mirror), or give a local directory with --model-file.",
        ) from None
    return dest
