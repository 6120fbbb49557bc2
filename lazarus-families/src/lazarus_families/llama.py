"""Llama (1, 2, 3, 3.1, 3.2): the plain decoder; everything it needs lives in the core.

What makes it Llama is only configuration: grouped-query attention through
``num_key_value_heads`` and llama3 RoPE scaling through ``rope_scaling``/``rope_parameters``,
both handled by :mod:`lazarus.models`.
"""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    model_type: str = "llama"


class Model(CausalLM):
    family = "llama"
    gguf_architecture = "llama"



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Llama-3.2-style config: GQA (4 heads, 2 KV heads), llama3 RoPE scaling, untied head."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,  # as Llama 3.2: above the original 8192 context
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }


def small_config(vocab_size: int = 8192) -> dict:
    """A ~75M-parameter Llama for benchmarks: 11 layers, hidden 768, 12 heads / 4 KV heads, tied."""
    config = tiny_config(vocab_size)
    config.update(hidden_size=768, intermediate_size=2048, num_hidden_layers=11, num_attention_heads=12,
                  num_key_value_heads=4, head_dim=64, tie_word_embeddings=True)
    return config
