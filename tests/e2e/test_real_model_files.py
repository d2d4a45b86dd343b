"""The real model files the stacks run: their headers give the catalog's numbers."""

from __future__ import annotations

import pytest

from deploykit.catalog import builtin_models, find_model
from deploykit.seams.modelfile import read_gguf, read_hf_dir
from tests.e2e.conftest import FP16_DIR, GGUF, need

pytestmark = pytest.mark.e2e
SHAPE = ("layers", "hidden_size", "intermediate_size", "attention_heads", "kv_heads", "head_dim", "vocab_size")


def test_real_gguf_header_matches_the_catalog() -> None:
    need(GGUF.is_file(), f"model {GGUF} missing")
    spec, weights = read_gguf(GGUF)
    catalog = find_model("smollm2-135m-instruct", builtin_models())
    assert {k: getattr(spec, k) for k in SHAPE} == {k: getattr(catalog, k) for k in SHAPE}
    assert spec.params == catalog.params
    assert weights.quant == "Q4_1" and GGUF.stat().st_size == catalog.gguf.size_bytes  # type: ignore[union-attr]


def test_converted_fp16_model_matches_the_catalog() -> None:
    need((FP16_DIR / "config.json").is_file(), f"FP16 model {FP16_DIR} missing")
    spec, weights = read_hf_dir(FP16_DIR)
    catalog = find_model("smollm2-135m-instruct", builtin_models())
    assert {k: getattr(spec, k) for k in SHAPE} == {k: getattr(catalog, k) for k in SHAPE}
    # FP16 safetensors: two bytes a parameter.
    assert abs(weights.size_bytes / 2 - catalog.params) / catalog.params < 0.01
