"""IBM Granite 3: Llama with four multipliers: on the embeddings (``embedding_multiplier``), on each
branch before the residual add (``residual_multiplier``), as the attention scale
(``attention_multiplier``, replacing head_dim ** -0.5) and a divisor of the logits (``logits_scaling``)."""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    model_type: str = "granite"
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0

    @property
    def attention_scale(self) -> float:
        return float(self.attention_multiplier)

    @property
    def embedding_scale(self) -> float:
        return float(self.embedding_multiplier)

    @property
    def residual_scale(self) -> float:
        return float(self.residual_multiplier)

    @property
    def logits_divisor(self) -> float:
        return float(self.logits_scaling)


class Model(CausalLM):
    family = "granite"



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Granite-3-style config with its real multipliers (12, 0.22, 1/64... scaled to the
    tiny head size) and logits_scaling 4, GQA and a tied head."""
    return {
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "attention_multiplier": 0.125,
        "logits_scaling": 4.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    }
