#!/usr/bin/env python3
"""Convert a GGUF model into a Hugging Face checkpoint (FP16 safetensors + tokenizer) for vLLM.

    convert_gguf_to_hf.py GGUF_FILE OUT_DIR [--dtype float16] [--force]

Runs where torch, transformers (with its GGUF loader), gguf and accelerate are installed - in
deploykit's vLLM CPU image (scripts/provision/model-smollm2-fp16.sh runs it there), so the host
needs none of them. The weights are de-quantized with transformers' GGUF loader
(`AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, dtype=...)`), the tokenizer comes from
`AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)`, both are written with `save_pretrained` into
a temporary folder beside OUT_DIR, repaired, checked, and renamed to OUT_DIR only when complete.

The tokenizer repair (`fix_tokenizer_json`, `fix_tokenizer_config`; pure functions on the JSON
dicts, unit-tested without torch/transformers): a GGUF file whose tokenizer is GPT-2 style
byte-level BPE (`tokenizer.ggml.model = gpt2`, as SmolLM2's) comes out of the conversion in
forms that decode to raw byte-level pieces ("Ġ" for a space, "Ċ" for a newline) under vLLM:

* transformers 4.x writes `tokenizer_class: LlamaTokenizer` (the *model's* type), a decoder
  `Sequence[ByteFallback, Fuse, Replace(▁→" "), ByteLevel]`, BPE `byte_fallback: true`, and
  `eos_token: <|im_start|>` (the BOS token), with `add_bos_token: true`. transformers 5 (which
  vLLM 0.32 runs on) honours that class and rebuilds a SentencePiece pipeline (Metaspace
  pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoder) over the byte-level vocabulary:
  `decode(["Hello", "Ġworld", "Ċ"])` gives "HelloĠworldĊ", prompts are split wrongly, and
  generation never stops at <|im_end|>.
* transformers 5 writes `tokenizer_class: TokenizersBackend` and a plain ByteLevel
  pre-tokenizer/decoder (it decodes right), but drops the original SmolLM2 tokenizer's
  individual-digits split, leaves the chat template only in chat_template.jinja and sets no
  model_max_length.

The repair makes both the tokenizer.json pipeline and tokenizer_config.json say what the vocabulary
is: no normalizer, a ByteLevel pre-tokenizer (after a Digits split where the GGUF's pre-tokenizer
asks for one, as SmolLM2's "smollm" does), a ByteLevel decoder and post-processor, BPE without
byte fallback, `tokenizer_class: PreTrainedTokenizerFast` (the generic class: transformers 4 and 5
both load tokenizer.json as it is instead of rebuilding a model-specific pipeline), the special
tokens the GGUF names, and the chat template inline. The result is then checked: decode(encode(x))
must give x back exactly, token by token too, with no "Ġ"/"Ċ", and the chat template must render.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# The tokenizer repair: pure functions on the JSON documents (no torch, transformers or
# tokenizers needed), so tests/unit/test_tokenizer_fix.py can run them anywhere.

FIX_VERSION = 1

# GPT-2's byte-level alphabet maps a space to "Ġ" (U+0120) and a newline to "Ċ" (U+010A).
BYTE_LEVEL_SPACE = "\u0120"
BYTE_LEVEL_NEWLINE = "\u010a"
SENTENCEPIECE_SPACE = "\u2581"

BYTE_LEVEL_PRE_TOKENIZER: dict[str, Any] = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": True,
    "use_regex": True,
}
DIGITS_PRE_TOKENIZER: dict[str, Any] = {"type": "Digits", "individual_digits": True}
BYTE_LEVEL_DECODER: dict[str, Any] = {
    "type": "ByteLevel",
    "add_prefix_space": True,
    "trim_offsets": True,
    "use_regex": True,
}
# As in the original SmolLM2 tokenizer.json: adds no special tokens (the chat template does).
BYTE_LEVEL_POST_PROCESSOR: dict[str, Any] = {
    "type": "ByteLevel",
    "add_prefix_space": True,
    "trim_offsets": False,
    "use_regex": True,
}
# GGUF pre-tokenizer names (tokenizer.ggml.pre, llama.cpp's names) that split digits one by one.
DIGIT_SPLITTING_PRE = frozenset({"smollm"})
GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Keys some transformers versions write into tokenizer_config.json that describe the loading
# call or the model rather than the tokenizer, or that contradict the fixed pipeline.
_STALE_CONFIG_KEYS = (
    "is_local",
    "local_files_only",
    "model_type",
    "legacy",
    "use_default_system_prompt",
    "add_bos_token",
    "add_eos_token",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "sp_model_kwargs",
    "spaces_between_special_tokens",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def is_byte_level_vocab(vocab: dict[str, int]) -> bool:
    """True for a GPT-2 style byte-level vocabulary ("Ġthe"), False for SentencePiece ("▁the")."""
    tokens = list(vocab)
    byte_level = sum(1 for t in tokens if BYTE_LEVEL_SPACE in t or BYTE_LEVEL_NEWLINE in t)
    sentencepiece = sum(1 for t in tokens if SENTENCEPIECE_SPACE in t)
    return byte_level > 0 and byte_level > sentencepiece


def _components(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A pipeline step and, for a Sequence, its parts (flattened)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for part in node.get(key, []):
            out.extend(_components(part, key))
        return out
    return [node]


def _types(node: dict[str, Any] | None, key: str) -> list[str]:
    return [str(c.get("type")) for c in _components(node, key)]


def byte_level_problems(tok: dict[str, Any]) -> list[str]:
    """What in a tokenizer.json keeps a byte-level vocabulary from decoding to plain text."""
    problems: list[str] = []
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        problems.append(f"model type is {model.get('type')!r}, not BPE")
    pre = _types(tok.get("pre_tokenizer"), "pretokenizers")
    if "ByteLevel" not in pre:
        problems.append(f"pre_tokenizer has no ByteLevel step ({pre or 'none'})")
    if "Metaspace" in pre:
        problems.append("pre_tokenizer has a SentencePiece Metaspace step")
    dec = _types(tok.get("decoder"), "decoders")
    if dec != ["ByteLevel"]:
        problems.append(f"decoder is {dec or 'none'}, not a single ByteLevel decoder")
    norm = _types(tok.get("normalizer"), "normalizers")
    if norm:
        problems.append(f"normalizer {norm} would change text before byte-level encoding")
    if model.get("byte_fallback"):
        problems.append("BPE byte_fallback is on (needs <0x..> tokens a byte-level vocabulary lacks)")
    post = tok.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing" and post.get("special_tokens"):
        problems.append(f"post_processor adds special tokens {sorted(post['special_tokens'])}")
    return problems


def fix_tokenizer_json(
    tok: dict[str, Any], *, split_digits: bool = False, byte_level: bool | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Give a byte-level BPE tokenizer.json the pipeline its vocabulary needs.

    Returns the fixed document (the input is not modified) and a list of what was changed. A
    tokenizer that is not byte-level BPE (``byte_level`` False, or autodetected from the
    vocabulary when None) is returned unchanged.
    """
    out = copy.deepcopy(tok)
    changes: list[str] = []
    model = out.get("model") or {}
    if byte_level is None:
        byte_level = model.get("type") == "BPE" and is_byte_level_vocab(model.get("vocab") or {})
    if not byte_level or model.get("type") != "BPE":
        return out, changes

    def put(key: str, value: Any) -> None:
        if out.get(key) != value:
            changes.append(f"{key}: {_short(out.get(key))} -> {_short(value)}")
            out[key] = copy.deepcopy(value)

    put("normalizer", None)
    if split_digits:
        put(
            "pre_tokenizer",
            {"type": "Sequence", "pretokenizers": [DIGITS_PRE_TOKENIZER, BYTE_LEVEL_PRE_TOKENIZER]},
        )
    else:
        put("pre_tokenizer", BYTE_LEVEL_PRE_TOKENIZER)
    put("decoder", BYTE_LEVEL_DECODER)
    put("post_processor", BYTE_LEVEL_POST_PROCESSOR)
    # Every byte is in a byte-level vocabulary, so BPE never needs an unknown token or a
    # fallback to <0x..> byte tokens; with them on, a SentencePiece-minded loader misreads it.
    for key, value in (("byte_fallback", False), ("fuse_unk", False), ("unk_token", None)):
        if model.get(key) != value:
            changes.append(f"model.{key}: {model.get(key)!r} -> {value!r}")
            model[key] = value
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) == "":
            changes.append(f"model.{key}: '' -> None")
            model[key] = None
    return out, changes


def fix_tokenizer_config(
    cfg: dict[str, Any],
    *,
    bos_token: str | None,
    eos_token: str | None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    chat_template: str | None = None,
    model_max_length: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Make tokenizer_config.json load the byte-level tokenizer.json as it is.

    ``*_token`` are the token strings the GGUF names (tokenizer.ggml.*_token_id). Returns the
    fixed document (the input is not modified) and a list of what was changed.
    """
    out = copy.deepcopy(cfg)
    changes: list[str] = []

    def put(key: str, value: Any) -> None:
        if value is None:
            return
        if out.get(key) != value:
            changes.append(f"{key}: {_short(out.get(key))} -> {_short(value)}")
            out[key] = value

    put("tokenizer_class", GENERIC_TOKENIZER_CLASS)
    put("bos_token", bos_token)
    put("eos_token", eos_token)
    put("pad_token", pad_token)
    put("unk_token", unk_token)
    put("add_prefix_space", False)
    # Cleaning up "tokenization spaces" strips the space before punctuation: wrong for BPE.
    put("clean_up_tokenization_spaces", False)
    put("chat_template", chat_template)
    put("model_max_length", model_max_length)
    for key in _STALE_CONFIG_KEYS:
        if key in out:
            changes.append(f"{key}: {_short(out[key])} -> (removed)")
            del out[key]
    return out, changes


def fix_special_tokens_map(
    stm: dict[str, Any],
    *,
    bos_token: str | None,
    eos_token: str | None,
    pad_token: str | None = None,
    unk_token: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """special_tokens_map.json (transformers 4 writes one) must agree with tokenizer_config.json."""
    out = copy.deepcopy(stm)
    changes: list[str] = []
    for key, value in (
        ("bos_token", bos_token),
        ("eos_token", eos_token),
        ("pad_token", pad_token),
        ("unk_token", unk_token),
    ):
        if value is None:
            continue
        old = out.get(key)
        old_text = old.get("content") if isinstance(old, dict) else old
        if old_text != value:
            changes.append(f"{key}: {old_text!r} -> {value!r}")
            out[key] = dict(old, content=value) if isinstance(old, dict) else value
    return out, changes


def decoding_problems(pieces: list[str], text: str, decoded: str) -> list[str]:
    """What is wrong with a decode: not the input back, or byte-level pieces left in it."""
    problems = []
    if decoded != text:
        problems.append(f"decode(encode(x)) != x: {decoded!r} != {text!r}")
    leaked = [p for p in pieces if BYTE_LEVEL_SPACE in p or BYTE_LEVEL_NEWLINE in p]
    if leaked:
        problems.append(f"byte-level pieces in the decoded text: {leaked}")
    return problems


def _short(value: Any, limit: int = 90) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# The conversion (needs torch, transformers, gguf, accelerate).

REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
MARKER = "deploykit-conversion.json"
CHECK_TEXTS = (
    "Hello world!\nHow are you?",
    "  Two spaces, a tab\tand 3.14159 in 2024 - café, naïve, 你好 🙂\n\n",
)


def log(msg: str) -> None:
    print(f"convert: {msg}", file=sys.stderr, flush=True)


def is_complete(out: Path) -> bool:
    """OUT holds a finished conversion (this script renames a folder into place only at the end)."""
    if not (out / MARKER).is_file() or not all((out / f).is_file() for f in REQUIRED_FILES):
        return False
    return any(out.glob("*.safetensors"))


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF key/values this conversion needs (no tensors are read)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    wanted = {
        "general.architecture",
        "general.name",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.chat_template",
    }
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in wanted or key.endswith(".context_length"):
            value = field.contents()
            meta[key] = value
    return meta


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_model(gguf: Path, dtype_name: str):
    """The model de-quantized to dtype, with no quantizer left on it (so it can be saved)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": dtype}
    try:  # transformers >= 5.x keeps GGUF weights packed unless asked to unpack them
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        model = model.dequantize(dtype=dtype) if hasattr(model, "dequantize") else model
        if getattr(model, "hf_quantizer", None) is not None:
            raise SystemExit("the model is still quantized after loading; cannot save it as a dense checkpoint")
    bad = {n: str(p.dtype) for n, p in model.named_parameters() if p.dtype != dtype or p.is_meta}
    if bad:
        raise SystemExit(f"{len(bad)} parameters are not dense {dtype_name}: {dict(list(bad.items())[:5])}")
    return model


def check_tokenizer(folder: Path, eos_token: str | None) -> list[str]:
    """Load the saved tokenizer the way vLLM does and make sure text survives it."""
    from transformers import AutoTokenizer

    loaders: list[tuple[str, Any]] = [("transformers.AutoTokenizer", AutoTokenizer.from_pretrained)]
    try:
        from vllm.tokenizers import get_tokenizer  # type: ignore[import-not-found]

        loaders.append(("vllm.tokenizers.get_tokenizer", get_tokenizer))
    except Exception:
        pass
    report: list[str] = []
    for name, load in loaders:
        tok = load(str(folder))
        kind = type(tok).__name__
        problems: list[str] = []
        for text in CHECK_TEXTS:
            ids = tok.encode(text, add_special_tokens=False)
            pieces = [tok.decode([i]) for i in ids]
            problems += decoding_problems(pieces, text, tok.decode(ids))
            stream = _stream_decode(tok, ids)
            if stream is not None and stream != text:
                problems.append(f"streamed decode != x: {stream!r}")
        if eos_token and tok.eos_token != eos_token:
            problems.append(f"eos_token is {tok.eos_token!r}, expected {eos_token!r}")
        messages = [{"role": "user", "content": "Say hello in one sentence"}]
        try:
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:
            problems.append(f"chat template does not render: {error}")
        else:
            if "Say hello in one sentence" not in prompt:
                problems.append(f"chat template lost the message: {prompt!r}")
        if problems:
            raise SystemExit(f"tokenizer check with {name} ({kind}) failed:\n  " + "\n  ".join(problems))
        report.append(f"{name} ({kind}): round-trip ok")
    return report


def _stream_decode(tok: Any, ids: list[int]) -> str | None:
    """Decode one id at a time as vLLM's streaming detokenizer does (tokenizers' DecodeStream)."""
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        return None
    stream = DecodeStream(skip_special_tokens=True)
    return "".join(piece for i in ids if (piece := stream.step(backend, i)) is not None)


def repair_tokenizer(folder: Path, meta: dict[str, Any], context_length: int | None) -> list[str]:
    """Apply the fix to the files save_pretrained wrote into folder."""
    tok_path = folder / "tokenizer.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    vocab = {str(k): int(v) for k, v in (tok.get("model") or {}).get("vocab", {}).items()}
    by_id = {v: k for k, v in vocab.items()}
    for added in tok.get("added_tokens", []):
        by_id.setdefault(int(added["id"]), added["content"])

    def token(key: str) -> str | None:
        value = meta.get(f"tokenizer.ggml.{key}")
        return by_id.get(int(value)) if value is not None else None

    bos, eos, pad, unk = (
        token("bos_token_id"),
        token("eos_token_id"),
        token("padding_token_id"),
        token("unknown_token_id"),
    )
    gguf_model = meta.get("tokenizer.ggml.model")
    byte_level = True if gguf_model == "gpt2" else None
    split_digits = meta.get("tokenizer.ggml.pre") in DIGIT_SPLITTING_PRE
    changes: list[str] = []
    problems = byte_level_problems(tok)
    if problems:
        log("tokenizer.json as converted: " + "; ".join(problems))
    fixed, c = fix_tokenizer_json(tok, split_digits=split_digits, byte_level=byte_level)
    changes += [f"tokenizer.json {x}" for x in c]
    _write_json(tok_path, fixed)

    template = meta.get("tokenizer.chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    cfg, c = fix_tokenizer_config(
        cfg,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        chat_template=template,
        model_max_length=context_length,
    )
    changes += [f"tokenizer_config.json {x}" for x in c]
    _write_json(cfg_path, cfg)
    if template is not None:
        # Keep the separate file (newer transformers read it first) identical to the inline one.
        jinja.write_text(template, encoding="utf-8")
    stm_path = folder / "special_tokens_map.json"
    if stm_path.is_file():
        stm, c = fix_special_tokens_map(
            json.loads(stm_path.read_text(encoding="utf-8")),
            bos_token=bos,
            eos_token=eos,
            pad_token=pad,
            unk_token=unk,
        )
        changes += [f"special_tokens_map.json {x}" for x in c]
        _write_json(stm_path, stm)
    return changes


def fix_generation_config(folder: Path, meta: dict[str, Any]) -> list[str]:
    """generation_config.json must stop at the GGUF's EOS token."""
    path = folder / "generation_config.json"
    gen = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    changes = []
    for key, meta_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        value = meta.get(f"tokenizer.ggml.{meta_key}")
        if value is not None and gen.get(key) != int(value):
            changes.append(f"generation_config.json {key}: {gen.get(key)!r} -> {int(value)}")
            gen[key] = int(value)
    if changes:
        _write_json(path, gen)
    return changes


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_readable(folder: Path) -> None:
    """Files 0644, folders 0755: the serving container may run as another user."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def sample_generation(model: Any, folder: Path) -> str:
    """A few greedy tokens from the saved checkpoint, as a sanity check of weights + template."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "user", "content": "Say hello in one sentence"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    model = model.float()  # float16 matmuls are slow or missing on some CPUs
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0][ids.shape[1] :], skip_special_tokens=True)


def convert(gguf: Path, out: Path, dtype_name: str) -> None:
    import transformers

    t0 = time.monotonic()
    meta = gguf_metadata(gguf)
    arch = meta.get("general.architecture")
    context_length = meta.get(f"{arch}.context_length")
    log(
        f"{gguf.name}: {arch}, tokenizer {meta.get('tokenizer.ggml.model')}/"
        f"{meta.get('tokenizer.ggml.pre')}, context {context_length}; transformers {transformers.__version__}"
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = load_model(gguf, dtype_name)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"weights de-quantized to {dtype_name}: {n_params / 1e6:.1f} M parameters ({time.monotonic() - t0:.0f}s)")
        model.save_pretrained(str(tmp), safe_serialization=True)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(tmp))
        changes = repair_tokenizer(tmp, meta, int(context_length) if context_length else None)
        changes += fix_generation_config(tmp, meta)
        for change in changes:
            log(f"fixed {change}")
        report = check_tokenizer(tmp, json.loads((tmp / "tokenizer_config.json").read_text())["eos_token"])
        for line in report:
            log(line)
        sample = sample_generation(model, tmp)
        log(f"sample answer (transformers, greedy): {sample!r}")
        if BYTE_LEVEL_SPACE in sample or BYTE_LEVEL_NEWLINE in sample or not sample.strip():
            raise SystemExit(f"the sample answer is not plain text: {sample!r}")

        marker = {
            "source": gguf.name,
            "source_size": gguf.stat().st_size,
            "source_sha256": sha256_of(gguf),
            "dtype": dtype_name,
            "transformers": transformers.__version__,
            "tokenizer_fix_version": FIX_VERSION,
            "tokenizer_fixes": changes,
            "sample_answer": sample,
            "seconds": round(time.monotonic() - t0, 1),
        }
        _write_json(tmp / MARKER, marker)
        make_readable(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {time.monotonic() - t0:.0f}s: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out", type=Path, help="the Hugging Face folder to write (atomically)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--force", action="store_true", help="convert again even if OUT is complete")
    args = parser.parse_args(argv)
    gguf, out = args.gguf.resolve(), args.out.resolve()
    if not gguf.is_file():
        parser.error(f"{gguf} is not a file")
    if is_complete(out) and not args.force:
        log(f"already converted: {out}")
        return 0
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    convert(gguf, out, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
