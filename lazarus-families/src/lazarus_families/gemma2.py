"""Gemma 2: Gemma plus attention and final-logit soft-capping, sliding-window attention in every
other layer (starting with layer 0), sandwich norms around both branches, and an attention scale
of ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``."""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs, gemma_embedding_scale


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    norm_offset = 1.0
    sandwich_norms = True

    model_type: str = "gemma2"
    head_dim: int | None = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    query_pre_attn_scalar: float = 256
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    sliding_window: int | None = 4096
    tie_word_embeddings: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.layer_types is None:
            self.layer_types = self.default_layer_types()

    def default_layer_types(self) -> list[str]:
        """Layer types of a config that does not list them (HF's default: layers 0, 2, 4, ... slide)."""
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)]

    @property
    def attention_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5

    @property
    def embedding_scale(self) -> float:
        return gemma_embedding_scale(self.hidden_size)

    @property
    def attn_softcap(self) -> float | None:
        return self.attn_logit_softcapping

    @property
    def final_softcap(self) -> float | None:
        return self.final_logit_softcapping

    @property
    def activation(self) -> str:
        return self.hidden_activation


class Model(CausalLM):
    family = "gemma2"



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Gemma 2 config whose specifics show at test sizes: a sliding window of 8, soft caps
    small enough to bend random logits (5 and 3), and ``query_pre_attn_scalar`` != head_dim."""
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": 24,
        "attn_logit_softcapping": 5.0,
        "final_logit_softcapping": 3.0,
        "sliding_window": 8,
        "tie_word_embeddings": True,
    }
