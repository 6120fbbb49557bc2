"""Qwen3 (dense): Qwen2 without q/k/v biases (``attention_bias``, false in the released models),
plus an RMSNorm over each head's queries and keys before RoPE (``self_attn.q_norm`` / ``k_norm``)
and an explicit ``head_dim`` that need not be hidden_size / heads. Optional sliding windows follow
Qwen2's rule (``use_sliding_window``, from ``max_window_layers`` on)."""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM
from lazarus_families.qwen2 import ModelArgs as Qwen2Args


@attrs.define(kw_only=True)
class ModelArgs(Qwen2Args):
    model_type: str = "qwen3"
    head_dim: int | None = 128

    @property
    def qk_norm(self) -> bool:
        return True

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias


class Model(CausalLM):
    family = "qwen3"


def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Qwen3-0.6B-style config: GQA, head_dim 32 (twice hidden/heads), tied embeddings."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 2,
        "tie_word_embeddings": True,
    }
