"""Model numbers from files: a GGUF header (no weights loaded) or a Hugging Face config.json.

The planner needs layers, heads and sizes; here they come from what the user points at rather
than from the catalog.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

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
        raise UsageError(f"model file {path} is not a regular file.", "Give the path of a .gguf file.")
    try:
        return _read_gguf(GGUFReader, path, model_id)
    except UsageError:
        raise
    except Exception as exc:  # a cut-short or hostile file: the gguf reader raises many kinds
        raise UsageError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {str(exc)[:120]}).",
            "Check the file is complete; llama.cpp needs GGUF, not safetensors or .bin.",
        ) from None


def _read_gguf(reader_class: Any, path: Path, model_id: str | None) -> tuple[ModelSpec, LocalWeights]:
    reader = reader_class(str(path))

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


def _count(config: dict[str, Any], key: str, name: str, default: int | None = None) -> int:
    """A positive whole number from config.json (not a bool, a float or a string)."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise UsageError(
            f"config.json of {name} lacks {key} — it does not look like a decoder-only LLM.",
            "deploykit plans decoder-only models such as Llama, Qwen2 or Mistral.",
        )
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**40:
        raise UsageError(
            f"config.json of {name}: {key} is {str(value)[:40]!r}, not a positive whole number.",
            "Fix config.json, or use the model's original file.",
        )
    return value


def spec_from_hf_config(config: dict[str, Any], model_id: str, name: str, params: int | None = None) -> ModelSpec:
    """Numbers from a Hugging Face ``config.json``; ``params`` from safetensors when known."""
    if not isinstance(config, dict):
        raise UsageError(f"config.json of {name} is not a JSON object.", "Use the model's original config.json.")
    hidden = _count(config, "hidden_size", name)
    layers = _count(config, "num_hidden_layers", name)
    heads = _count(config, "num_attention_heads", name)
    vocab = _count(config, "vocab_size", name)
    kv_heads = _count(config, "num_key_value_heads", name, heads)
    head_dim = _count(config, "head_dim", name, max(1, hidden // heads))
    inter = _count(config, "intermediate_size", name, 0) or None
    max_context = _count(config, "max_position_embeddings", name, 4096)
    if params is None:
        # Embedding (+ untied head) + per-layer attention and MLP: good to a few percent for dense models.
        attn = hidden * (heads * head_dim) * 2 + hidden * (kv_heads * head_dim) * 2
        mlp = 3 * hidden * int(inter or 4 * hidden)
        head = 0 if config.get("tie_word_embeddings") else vocab * hidden
        params = vocab * hidden + head + layers * (attn + mlp)
    try:
        return ModelSpec(
            id=model_id,
            name=name,
            hf_repo=None,
            architecture=str(config.get("model_type") or "unknown"),
            params=params,
            layers=layers,
            hidden_size=hidden,
            intermediate_size=inter,
            attention_heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            max_context=max_context,
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        )
    except ValidationError as exc:
        fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        raise UsageError(
            f"config.json of {name} gives values deploykit cannot plan with ({fields}).",
            "Fix config.json, or use the model's original file.",
        ) from None


def read_hf_dir(path: Path, model_id: str | None = None) -> tuple[ModelSpec, LocalWeights]:
    """A local Hugging Face model directory (config.json + safetensors), as vLLM loads it."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{path} has no config.json.", "Give a .gguf file or a Hugging Face model directory.")
    from deploykit.textfile import read_text

    text = read_text(config_path, "model config", "Use the model's original config.json.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{config_path} is not JSON ({exc.msg} at line {exc.lineno}).", "Use the model's original config.json."
        ) from None
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
