"""What the planner knows about a model: its shapes and where its weights come from.

A ``ModelSpec`` comes from the catalog (deploykit/catalog/models/*.toml), a GGUF header or a Hugging Face
config.json (deploykit.seams.modelfile); it is recorded in plan.json's inputs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GgufSource(_Frozen):
    repo: str | None = None
    file: str
    quant: str
    size_bytes: int = Field(gt=0)


class ModelSpec(_Frozen):
    """The numbers the planner needs about a model, from the catalog, a GGUF header or a config.json."""

    id: str = Field(pattern=MODEL_ID)
    name: str
    hf_repo: str | None = None
    architecture: str
    params: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int | None = None
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_context: int = Field(gt=0)
    torch_dtype: str = "bfloat16"
    reasoning: Literal["deepseek_r1"] | None = None
    tool_calling: bool = False
    gguf: GgufSource | None = None

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        # K and V, for every layer and KV head.
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes
