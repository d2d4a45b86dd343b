"""Model numbers from files: a GGUF header (no weights loaded) or a Hugging Face config.json.

The planner needs layers, heads and sizes; here they come from what the user points at rather
than from the catalog.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deploykit.values.errors import UsageError
from deploykit.values.model import GgufSource, ModelSpec
from deploykit.values.plan import LocalWeights

# A model whose file does not say how long a context it was trained for is taken at this length.
UNSTATED_CONTEXT = 4096


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
    if not path.is_file():
        raise UsageError(f"model file {path} is not a regular file.", "Give the path of a .gguf file.")
    try:
        return _spec_from_gguf(read_gguf_header(path), path, model_id)
    except (OSError, ValueError, KeyError, OverflowError, struct.error) as exc:  # cut short, or hostile
        detail = (str(exc).splitlines() or [""])[0][:120]
        raise UsageError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {detail}).",
            "Check the file is complete; llama.cpp needs GGUF, not safetensors or .bin.",
        ) from None


@dataclass(frozen=True)
class GgufTensor:
    name: str
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufArray:
    """An array in the metadata, by its length."""

    length: int


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF file's metadata (an array kept as its length only) and tensor table."""

    fields: dict[str, object]
    tensors: list[GgufTensor]


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads a GGUF header front to back: scalars, strings, and arrays skipped by their length."""

    def __init__(self, buf: mmap.mmap, order: str, offset: int) -> None:
        self.buf, self.order, self.offset = buf, order, offset

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(self.order + fmt, self.buf, self.offset)
        self.offset += struct.calcsize(self.order + fmt)
        return values

    def string(self) -> str:
        (length,) = self.unpack("Q")
        if self.offset + length > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        self.offset += length
        return self.buf[self.offset - length : self.offset].decode("utf-8")

    def skip(self, value_type: int, count: int) -> None:
        if value_type in _SCALARS:
            self.offset += count * struct.calcsize(_SCALARS[value_type])
        elif value_type == _STRING:
            for _ in range(count):
                (length,) = self.unpack("Q")
                self.offset += length
        else:
            raise ValueError(f"an array of type {value_type}")
        if self.offset > len(self.buf):
            raise ValueError("an array runs past the end of the file")

    def field(self) -> tuple[str, object]:
        key = self.string()
        (value_type,) = self.unpack("I")
        if value_type in _SCALARS:
            return key, self.unpack(_SCALARS[value_type])[0]
        if value_type == _STRING:
            return key, self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("IQ")
            self.skip(item_type, count)
            return key, GgufArray(count)
        raise ValueError(f"metadata {key!r} has value type {value_type}")


def read_gguf_header(path: Path) -> GgufHeader:
    """The header walked with struct: gguf's GGUFReader builds numpy views of every vocabulary entry
    (2.4 s for a 49k-token model on a 2-core machine, paid by each `render`/`up --model-file`); this reads
    the same header in milliseconds. Arrays are skipped, keeping their length (the vocabulary size)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # the table of block sizes

    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # version 0 read back: big-endian
        version, n_tensors, n_fields = struct.unpack_from(order + "IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        cursor = _Cursor(buf, order, 24)
        fields = dict(cursor.field() for _ in range(n_fields))
        tensors = []
        data_end = 0
        for _ in range(n_tensors):
            name = cursor.string()
            (n_dims,) = cursor.unpack("I")
            n_elements = math.prod(cursor.unpack(f"{n_dims}Q"))
            ggml_type, data_offset = cursor.unpack("IQ")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            tensors.append(GgufTensor(name, n_elements, n_elements * type_size // block))
            data_end = max(data_end, data_offset + tensors[-1].n_bytes)
        offset, alignment = cursor.offset, fields.get("general.alignment", 32)
        data_start = -(-offset // alignment) * alignment if isinstance(alignment, int) and alignment > 0 else offset
        if data_start + data_end > len(buf):  # a download cut short: the header is whole, the weights are not
            raise ValueError(f"the tensors need {data_start + data_end} bytes and the file has {len(buf)}")
    return GgufHeader(fields, tensors)


def _spec_from_gguf(header: GgufHeader, path: Path, model_id: str | None) -> tuple[ModelSpec, LocalWeights]:
    fields = header.fields

    def number(key: str) -> int:
        value = fields.get(key)
        return int(value) if isinstance(value, int | float) else 0

    arch = str(fields.get("general.architecture") or "")
    if not arch:
        raise UsageError(f"{path} has no general.architecture in its GGUF header.", "Re-convert the model.")
    layers = number(f"{arch}.block_count")
    hidden = number(f"{arch}.embedding_length")
    heads = number(f"{arch}.attention.head_count")
    if not (layers and hidden and heads):
        raise UsageError(f"{path}: the GGUF header lacks layer or head counts for '{arch}'.")
    kv_heads = number(f"{arch}.attention.head_count_kv") or heads
    head_dim = number(f"{arch}.attention.key_length") or hidden // heads
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = number(f"{arch}.vocab_size") or (tokens.length if isinstance(tokens, GgufArray) else 32000)
    params = sum(t.n_elements for t in header.tensors)
    size = sum(t.n_bytes for t in header.tensors)
    non_layer = sum(t.n_bytes for t in header.tensors if not t.name.startswith("blk."))
    file_type = fields.get("general.file_type")
    quant = _GGUF_FILE_TYPES.get(int(file_type), f"type{file_type}") if isinstance(file_type, int) else "unknown"
    name = str(fields.get("general.name") or path.stem)
    template = str(fields.get("tokenizer.chat_template") or "")
    spec = ModelSpec(
        id=model_id or slug(path.stem),
        name=name,
        architecture=arch,
        params=params,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=number(f"{arch}.feed_forward_length") or None,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_context=number(f"{arch}.context_length") or UNSTATED_CONTEXT,
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
    max_context = _count(config, "max_position_embeddings", name, UNSTATED_CONTEXT)
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
    if not config_path.exists():  # a pipe or folder in its place is named by read_text below
        raise UsageError(f"{path} has no config.json.", "Give a .gguf file or a Hugging Face model directory.")
    from deploykit.seams.textfile import read_text
    from deploykit.values.documents import load_json

    hint = "Use the model's original config.json."
    config = load_json(read_text(config_path, "model config", hint), config_path, "model config", hint)
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
