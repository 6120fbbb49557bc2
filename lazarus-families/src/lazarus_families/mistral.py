"""Mistral: Llama with sliding-window attention in every layer (``sliding_window``)."""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    model_type: str = "mistral"

    def window_for_layer(self, layer: int) -> int | None:
        # HF Mistral applies `sliding_window` to every layer when it is set (null = full attention)
        return self.sliding_window or None


class Model(CausalLM):
    family = "mistral"
    gguf_architecture = "llama"  # llama.cpp runs Mistral as llama (without a sliding window)



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Mistral config with GQA and a sliding window of 8 tokens, so short tests cross it."""
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 8,
        "tie_word_embeddings": False,
    }
