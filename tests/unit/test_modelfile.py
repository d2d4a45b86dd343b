"""Model numbers read from files: a GGUF header and a Hugging Face config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.catalog import builtin_models, find_model
from deploykit.seams.modelfile import (
    GgufArray,
    read_gguf,
    read_gguf_header,
    read_hf_dir,
    read_model_path,
    spec_from_hf_config,
)
from deploykit.values.errors import UsageError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHAPE = ("layers", "hidden_size", "intermediate_size", "attention_heads", "kv_heads", "head_dim", "vocab_size")


def test_hf_config_gives_the_catalog_numbers() -> None:
    spec, weights = read_hf_dir(FIXTURES / "hf" / "smollm2-135m-instruct-fp16")
    catalog = find_model("smollm2-135m-instruct", builtin_models())
    assert {k: getattr(spec, k) for k in SHAPE} == {k: getattr(catalog, k) for k in SHAPE}
    assert spec.max_context == 8192 and spec.torch_dtype == "float16" and spec.architecture == "llama"
    assert weights.format == "hf"
    # No safetensors beside the fixture: the parameter count is estimated from the shapes, within 2 %.
    assert abs(spec.params - catalog.params) / catalog.params < 0.02
    assert spec.kv_bytes_per_token() == catalog.kv_bytes_per_token()


def test_hf_config_without_llm_fields_is_refused() -> None:
    with pytest.raises(UsageError, match="decoder-only"):
        spec_from_hf_config({"model_type": "bert"}, "x", "x")


def test_gguf_header() -> None:
    spec, weights = read_gguf(FIXTURES / "gguf" / "tiny.gguf")
    assert (spec.layers, spec.hidden_size, spec.attention_heads, spec.kv_heads) == (2, 64, 4, 2)
    assert spec.head_dim == 16 and spec.max_context == 2048 and spec.vocab_size == 256
    assert weights.format == "gguf" and weights.quant == "F16"
    assert weights.non_layer_bytes == 2 * 256 * 64 * 2  # token embedding + output head, f16


def test_gguf_header_agrees_with_the_gguf_library() -> None:
    """deploykit walks the header itself (fast); gguf's own GGUFReader is the reference it must match."""
    from gguf import GGUFReader

    path = FIXTURES / "gguf" / "tiny.gguf"
    reference = GGUFReader(str(path))
    header = read_gguf_header(path)
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        value = header.fields[key]
        if isinstance(value, GgufArray):
            assert value.length == len(field.data), key
        else:
            assert value == pytest.approx(field.contents()), key
    assert [(t.name, t.n_elements, t.n_bytes) for t in header.tensors] == [
        (t.name, int(t.n_elements), int(t.n_bytes)) for t in reference.tensors
    ]


def test_gguf_cut_anywhere_is_refused_in_words(tmp_path: Path) -> None:
    data = (FIXTURES / "gguf" / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    # Through the header (metadata, tensor table), and one byte short of whole: a download cut short.
    for size in [*range(0, 4096, 37), len(data) - 1]:
        cut.write_bytes(data[:size])
        with pytest.raises(UsageError, match="is not a readable GGUF file"):
            read_gguf(cut)


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no config\.json"):
        read_model_path(tmp_path)


def test_broken_config_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(UsageError, match="is not JSON"):
        read_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UsageError):
        read_hf_dir(tmp_path)
