"""Gemma (1): (1 + w) RMSNorm, embeddings scaled by sqrt(hidden_size), GELU-tanh MLP, tied head.

HF's Gemma treats the legacy ``hidden_act: "gelu"`` of the released configs as the tanh
approximation (and transformers 4 read ``hidden_activation`` first), so this family does too.
"""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs, gemma_embedding_scale


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    norm_offset = 1.0

    model_type: str = "gemma"
    head_dim: int | None = 256
    hidden_act: str = "gelu_pytorch_tanh"
    hidden_activation: str | None = None
    tie_word_embeddings: bool = True

    @property
    def embedding_scale(self) -> float:
        return gemma_embedding_scale(self.hidden_size)

    @property
    def activation(self) -> str:
        name = self.hidden_activation or self.hidden_act
        return "gelu_pytorch_tanh" if name == "gelu" else name


class Model(CausalLM):
    family = "gemma"



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Gemma config: multi-query attention (1 KV head), head_dim 32 != hidden/heads."""
    return {
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
