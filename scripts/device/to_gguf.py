"""Convert the model make_tiny_model.py writes into GGUF with llama.cpp's own converter.

    python3 scripts/device/to_gguf.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf [--outtype f16]

It runs LLAMA_CPP_DIR/convert_hf_to_gguf.py unchanged but for one thing: the converter names a BPE
tokenizer's pre-tokenizer by hashing how it splits a test text, and the fixture tokenizer is a trimmed
copy of SmolLM2's (tests/fixtures/tokenizer), whose hash it cannot know. When the converter does not
recognise the hash, this says "smollm" — what the tokenizer is — instead of stopping.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

PRE_TOKENIZER = "smollm"


def _patch_pre_tokenizer(llama_cpp: Path) -> None:
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    try:
        from conversion.base import TextModel  # llama.cpp ≥ 0.5: the converter is a package
    except ImportError:  # older trees keep everything in convert_hf_to_gguf.py; nothing to patch there
        return
    recognise = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(recognise(self, tokenizer))
        except NotImplementedError:
            return PRE_TOKENIZER

    TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("llama_cpp", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--outtype", default="f16")
    args = parser.parse_args()
    _patch_pre_tokenizer(args.llama_cpp)
    script = args.llama_cpp / "convert_hf_to_gguf.py"
    sys.argv = [str(script), str(args.model), "--outfile", str(args.out), "--outtype", args.outtype]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
