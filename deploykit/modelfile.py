"""Model numbers from files: a GGUF header (no weights loaded) or a Hugging Face config.json.

The planner needs layers, heads and sizes; here they come from what the user points at rather
than from the catalog.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from deploykit.catalog import GgufSource, ModelSpec
from deploykit.errors import UsageError


class LocalWeights(BaseModel):
    """Weights already on disk: a GGUF file or a Hugging Face model directory."""

    model_config = ConfigDict(frozen=True)

    path: str
    format: Literal["gguf", "hf"]
    size_bytes: int
    quant: str | None = None  # GGUF type, e.g. "Q4_K_M"; None for an HF directory
    # GGUF only: bytes of tensors outside the repeating blocks (token embedding, output head).
    non_layer_bytes: int | None = None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"


# llama.cpp's LLAMA_FTYPE numbers for the file types people meet.
_GGUF_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    30: "IQ4_XS",
    32: "BF16",
}


def read_gguf(path: Path, model_id: str | None = None) -> tuple[ModelSpec, LocalWeights]:
    """Read architecture numbers and tensor sizes from a GGUF header."""
    from gguf import GGUFReader  # numpy-backed; only paid for when a file is given

    if not path.is_file():
        raise UsageError(f"model file {path} does not exist.", "Give the path of a .gguf file.")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise UsageError(
            f"{path} is not a readable GGUF file ({exc}).",
            "Check the file is complete; llama.cpp needs GGUF, not safetensors or .bin.",
        ) from None

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = str(field("general.architecture") or "")
    if not arch:
        raise UsageError(f"{path} has no general.architecture in its GGUF header.", "Re-convert the model.")
    layers = int(field(f"{arch}.block_count") or 0)
    hidden = int(field(f"{arch}.embedding_length") or 0)
    heads = int(field(f"{arch}.attention.head_count") or 0)
    if not (layers and hidden and heads):
        raise UsageError(f"{path}: the GGUF header lacks layer or head counts for '{arch}'.")
    kv_heads = int(field(f"{arch}.attention.head_count_kv") or heads)
    head_dim = int(field(f"{arch}.attention.key_length") or hidden // heads)
    vocab = field(f"{arch}.vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else 32000
    params = sum(int(t.n_elements) for t in reader.tensors)
    size = sum(int(t.n_bytes) for t in reader.tensors)
    non_layer = sum(int(t.n_bytes) for t in reader.tensors if not t.name.startswith("blk."))
    file_type = field("general.file_type")
    quant = _GGUF_FILE_TYPES.get(int(file_type), f"type{file_type}") if file_type is not None else "unknown"
    name = str(field("general.name") or path.stem)
    template = str(field("tokenizer.chat_template") or "")
    spec = ModelSpec(
        id=model_id or slug(path.stem),
        name=name,
        architecture=arch,
        params=params,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=int(field(f"{arch}.feed_forward_length") or 0) or None,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(vocab),
        max_context=int(field(f"{arch}.context_length") or 4096),
        reasoning="deepseek_r1" if "<think>" in template or "r1" in name.lower().split("-") else None,
        gguf=GgufSource(file=path.name, quant=quant, size_bytes=path.stat().st_size),
    )
    weights = LocalWeights(path=str(path), format="gguf", size_bytes=size, quant=quant, non_layer_bytes=non_layer)
    return spec, weights


def spec_from_hf_config(config: dict[str, Any], model_id: str, name: str, params: int | None = None) -> ModelSpec:
    """Numbers from a Hugging Face ``config.json``; ``params`` from safetensors when known."""
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"config.json of {name} lacks {exc} — it does not look like a decoder-only LLM.",
            "deploykit plans decoder-only models such as Llama, Qwen2 or Mistral.",
        ) from None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = config.get("intermediate_size")
    if params is None:
        # Embedding (+ untied head) + per-layer attention and MLP: good to a few percent for dense models.
        attn = hidden * (heads * head_dim) * 2 + hidden * (kv_heads * head_dim) * 2
        mlp = 3 * hidden * int(inter or 4 * hidden)
        head = 0 if config.get("tie_word_embeddings") else vocab * hidden
        params = vocab * hidden + head + layers * (attn + mlp)
    return ModelSpec(
        id=model_id,
        name=name,
        hf_repo=None,
        architecture=str(config.get("model_type") or "unknown"),
        params=params,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=int(inter) if inter else None,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_context=int(config.get("max_position_embeddings") or 4096),
        torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
    )


def read_hf_dir(path: Path, model_id: str | None = None) -> tuple[ModelSpec, LocalWeights]:
    """A local Hugging Face model directory (config.json + safetensors), as vLLM loads it."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{path} has no config.json.", "Give a .gguf file or a Hugging Face model directory.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config_path} is not readable JSON ({exc}).") from None
    weights = sorted(path.glob("*.safetensors"))
    size = sum(w.stat().st_size for w in weights)
    spec = spec_from_hf_config(config, model_id or slug(path.name), path.name)
    if size:
        # 2 bytes a parameter in FP16/BF16 safetensors: the file size is the better count.
        spec = spec.model_copy(update={"params": size // 2})
    return spec, LocalWeights(path=str(path), format="hf", size_bytes=size or spec.params * 2)


def read_model_path(path: Path, model_id: str | None = None) -> tuple[ModelSpec, LocalWeights]:
    if path.is_dir():
        return read_hf_dir(path, model_id)
    return read_gguf(path, model_id)
