"""The GGUF -> Hugging Face tokenizer repair in scripts/convert_gguf_to_hf.py.

Runs without torch, transformers or docker: the repair is a pure function on tokenizer.json /
tokenizer_config.json documents. The fixtures in tests/fixtures/tokenizer/ are real outputs of the
SmolLM2-135M-Instruct conversion, trimmed to a few hundred vocabulary entries (their README says
how). Where the `tokenizers` package is importable, real text also goes through the files.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest

from tests.unit.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"


def _load_module():
    spec = importlib.util.spec_from_file_location("convert_gguf_to_hf", ROOT / "scripts" / "convert_gguf_to_hf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


conv = _load_module()

EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
SPECIAL = EXPECTED["special_tokens"]
TEXT = "Hello world!\nHow are you?"
CHAT_TEMPLATE = (FIXTURES / "chat_template.jinja").read_text(encoding="utf-8")


def fixture(name: str) -> dict:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    data.pop("_fixture", None)
    return data


# Converted by transformers 4.57.6 / by 5.19.0, and what vLLM 0.32.0 made of the 4.57.6 one.
T4 = "transformers-4.57.6.tokenizer.json"
T5 = "transformers-5.19.0.tokenizer.json"
VLLM_LOADED = "vllm-0.32.0-loaded-transformers-4.57.6.tokenizer.json"
ALL = (T4, T5, VLLM_LOADED)
BROKEN = (T4, VLLM_LOADED)


def fix(name: str) -> tuple[dict, list[str]]:
    return conv.fix_tokenizer_json(fixture(name), split_digits=True)


# --- the structure, no third-party package needed ------------------------------------------------


@pytest.mark.parametrize("name", BROKEN)
def test_the_recorded_conversions_are_broken(name):
    problems = conv.byte_level_problems(fixture(name))
    assert any("decoder" in p for p in problems), problems


def test_vllm_loaded_pipeline_is_sentencepiece():
    # transformers 5 rebuilt a Metaspace pipeline because tokenizer_config said LlamaTokenizer.
    assert fixture(T4.replace("tokenizer.json", "tokenizer_config.json"))["tokenizer_class"] == "LlamaTokenizer"
    problems = conv.byte_level_problems(fixture(VLLM_LOADED))
    assert any("Metaspace" in p for p in problems), problems


@pytest.mark.parametrize("name", ALL)
def test_fix_gives_a_byte_level_pipeline(name):
    fixed, changes = fix(name)
    assert conv.byte_level_problems(fixed) == []
    assert changes, "the recorded conversions all differ from the original SmolLM2 pipeline"
    assert fixed["normalizer"] is None
    assert fixed["decoder"] == {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    assert fixed["pre_tokenizer"] == {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert fixed["model"]["byte_fallback"] is False
    assert fixed["model"]["unk_token"] is None
    # vocabulary, merges and added tokens are kept as they were
    original = fixture(name)
    assert fixed["model"]["vocab"] == original["model"]["vocab"]
    assert fixed["model"]["merges"] == original["model"]["merges"]
    assert fixed["added_tokens"] == original["added_tokens"]


@pytest.mark.parametrize("name", ALL)
def test_fix_is_idempotent_and_pure(name):
    original = fixture(name)
    before = copy.deepcopy(original)
    fixed, _ = conv.fix_tokenizer_json(original, split_digits=True)
    assert original == before, "the input document must not be modified"
    again, changes = conv.fix_tokenizer_json(fixed, split_digits=True)
    assert again == fixed
    assert changes == []


def test_without_digit_split_the_pre_tokenizer_is_plain_byte_level():
    fixed, _ = conv.fix_tokenizer_json(fixture(T4))
    assert fixed["pre_tokenizer"]["type"] == "ByteLevel"


def test_byte_level_vocabulary_is_detected():
    assert conv.is_byte_level_vocab(fixture(T4)["model"]["vocab"])
    sentencepiece = {"<unk>": 0, "\u2581the": 1, "\u2581a": 2, "s": 3}
    assert not conv.is_byte_level_vocab(sentencepiece)


def test_a_tokenizer_that_is_not_byte_level_is_left_alone():
    doc = fixture(VLLM_LOADED)
    fixed, changes = conv.fix_tokenizer_json(doc, byte_level=False)
    assert fixed == doc
    assert changes == []


def test_tokenizer_config_fix():
    cfg = fixture("transformers-4.57.6.tokenizer_config.json")
    assert cfg["eos_token"] == "<|im_start|>"  # the recorded conversion got EOS wrong
    fixed, changes = conv.fix_tokenizer_config(cfg, chat_template=CHAT_TEMPLATE, model_max_length=8192, **SPECIAL)
    assert fixed["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert fixed["eos_token"] == "<|im_end|>"
    assert fixed["bos_token"] == "<|im_start|>"
    assert fixed["pad_token"] == "<|im_end|>"
    assert fixed["unk_token"] == "<|endoftext|>"
    assert fixed["chat_template"] == CHAT_TEMPLATE
    assert "<|im_start|>assistant" in fixed["chat_template"]
    assert fixed["model_max_length"] == 8192
    assert fixed["clean_up_tokenization_spaces"] is False
    for key in ("add_bos_token", "eos_token_id", "bos_token_id", "legacy", "model_type"):
        assert key not in fixed, key
    assert fixed["added_tokens_decoder"] == cfg["added_tokens_decoder"]
    assert any(c.startswith("tokenizer_class") for c in changes)
    again, changes = conv.fix_tokenizer_config(fixed, chat_template=CHAT_TEMPLATE, model_max_length=8192, **SPECIAL)
    assert again == fixed and changes == []


def test_tokenizer_config_fix_on_transformers_5_output():
    cfg = fixture("transformers-5.19.0.tokenizer_config.json")
    assert "chat_template" not in cfg
    fixed, _ = conv.fix_tokenizer_config(cfg, chat_template=CHAT_TEMPLATE, model_max_length=8192, **SPECIAL)
    assert fixed["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert fixed["chat_template"] == CHAT_TEMPLATE
    assert "is_local" not in fixed and "local_files_only" not in fixed


def test_special_tokens_map_fix():
    stm = {"bos_token": {"content": "<|im_start|>", "lstrip": False}, "eos_token": "<|im_start|>"}
    fixed, changes = conv.fix_special_tokens_map(stm, **SPECIAL)
    assert fixed["eos_token"] == "<|im_end|>"
    assert fixed["bos_token"] == {"content": "<|im_start|>", "lstrip": False}
    assert fixed["unk_token"] == "<|endoftext|>"
    assert len(changes) == 3


def test_decoding_problems():
    assert conv.decoding_problems(["Hello", " world"], "Hello world", "Hello world") == []
    bad = conv.decoding_problems(["Hello", "Ġworld"], "Hello world", "HelloĠworld")
    assert len(bad) == 2


# --- real text through the files (needs the `tokenizers` package) ------------------------------


def _tokenizer(doc: dict):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_str(json.dumps(doc))


def _stream(tok, ids: list[int]) -> str:
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(skip_special_tokens=True)
    return "".join(p for i in ids if (p := stream.step(tok, i)) is not None)


def test_recorded_vllm_pipeline_reproduces_the_bug():
    tok = _tokenizer(fixture(VLLM_LOADED))
    ids = EXPECTED["texts"][TEXT]["ids"]
    decoded = tok.decode(ids)
    assert decoded == EXPECTED["vllm_decoded"][TEXT]
    assert "Ġ" in decoded and "Ċ" in decoded


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("text", sorted(EXPECTED["texts"]))
def test_fixed_tokenizer_round_trips_real_text(name, text):
    fixed, _ = fix(name)
    tok = _tokenizer(fixed)
    want = EXPECTED["texts"][text]
    enc = tok.encode(text, add_special_tokens=True)
    assert enc.ids == want["ids"], "the fixed pipeline must tokenize as the original SmolLM2 one"
    decoded = tok.decode(enc.ids)
    assert decoded == text
    assert "Ġ" not in decoded and "Ċ" not in decoded
    assert _stream(tok, enc.ids) == text
    pieces = [tok.decode([i]) for i in enc.ids]
    assert conv.decoding_problems(pieces, text, decoded) == []


@pytest.mark.parametrize("name", ALL)
def test_fixed_tokenizer_decodes_model_output_ids(name):
    # What the model generates: byte-level ids, plus the end-of-turn token the server skips.
    fixed, _ = fix(name)
    tok = _tokenizer(fixed)
    eos_id = tok.token_to_id(SPECIAL["eos_token"])
    ids = [*EXPECTED["texts"][TEXT]["ids"], eos_id]
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
