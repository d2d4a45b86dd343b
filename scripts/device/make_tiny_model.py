"""Make a small Qwen2-architecture model with random weights, saved as transformers saves a checkpoint.

Nothing is downloaded: the weights are random (seeded) and the tokenizer is the trimmed SmolLM2 byte-level
BPE tokenizer recorded in tests/fixtures/tokenizer (it travels with the tree). The model answers
nonsense; what it is for is memory: its shapes are Qwen2-0.5B's (hidden 896, 14 heads, 2 KV heads,
intermediate 4864) with fewer layers, so llama.cpp's buffers on the GPU can be set beside the planner's
estimate without carrying a real model.

    python3 scripts/device/make_tiny_model.py OUT_DIR [--layers 8] [--hidden 896] [--dtype float16]

Needs torch and transformers (the device image has both).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizer"
# The vocabulary size of the tokenizer the fixture was trimmed from: its ids go up to 49151.
VOCAB = 49152


def qwen2_config(layers: int, hidden: int) -> dict[str, object]:
    """Qwen2-0.5B's proportions at any width: 64-wide heads, 7 query heads per KV head."""
    heads = max(1, hidden // 64)
    kv_heads = max(1, heads // 7)
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": hidden * 38 // 7 // 64 * 64 or 64,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": VOCAB,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _fixture(name: str) -> dict[str, object]:
    """A recorded tokenizer file without the "_fixture" note that says where it came from (tokenizers
    refuses unknown keys)."""
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def write_tokenizer(out: Path) -> None:
    (out / "tokenizer.json").write_text(json.dumps(_fixture("transformers-5.19.0.tokenizer.json")), encoding="utf-8")
    config = _fixture("transformers-5.19.0.tokenizer_config.json")
    config["chat_template"] = (FIXTURES / "chat_template.jinja").read_text(encoding="utf-8")
    shutil.copyfile(FIXTURES / "chat_template.jinja", out / "chat_template.jinja")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def make(out: Path, layers: int, hidden: int, dtype: str, seed: int = 0) -> dict[str, object]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**qwen2_config(layers, hidden))
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out)
    params = sum(p.numel() for p in model.parameters())
    return {"path": str(out), "params": params, "layers": layers, "hidden": hidden, "dtype": dtype}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    print(json.dumps(make(args.out, args.layers, args.hidden, args.dtype)))


if __name__ == "__main__":
    main()
