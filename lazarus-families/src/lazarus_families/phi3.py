"""Phi-3 / Phi-3.5 / Phi-4: a Llama-style decoder whose checkpoints store the attention input
projections as one ``self_attn.qkv_proj`` and the MLP's gate and up projections as one
``mlp.gate_up_proj`` (gate first). Loading splits them into ``q_proj``/``k_proj``/``v_proj`` and
``gate_proj``/``up_proj``, so a Phi-3 model has the same hook points and LoRA targets as every
other family; saving (``hf_weights``) fuses them back. Also: partial RoPE
(``partial_rotary_factor``) and a sliding window on every layer when ``sliding_window`` is set.
Long-context RoPE (``longrope``/``su`` scaling) is not supported yet.
"""

from __future__ import annotations

import attrs
import mlx.core as mx
from mlx.utils import tree_flatten

from lazarus.models.fused import Fused, join_fused, split_fused
from lazarus.models.transformer import CausalLM, TransformerArgs, sanitize_weights


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    model_type: str = "phi3"
    rms_norm_eps: float = 1e-5
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: int = 4096

    @property
    def rope_dims(self) -> int:
        return int(self.dim_per_head * self.partial_rotary_factor)

    def window_for_layer(self, layer: int) -> int | None:
        return self.sliding_window or None

    def fused(self) -> Fused:
        """The checkpoint's fused layers and the rows each part takes."""
        q = self.num_attention_heads * self.dim_per_head
        kv = self.kv_heads * self.dim_per_head
        return {
            "self_attn.qkv_proj": (("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)),
            "mlp.gate_up_proj": (("mlp.gate_proj", self.intermediate_size), ("mlp.up_proj", self.intermediate_size)),
        }


class Model(CausalLM):
    family = "phi3"

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The checkpoint's fused qkv_proj / gate_up_proj split into the separate layers."""
        return split_fused(sanitize_weights(weights, self.args), self.args.fused())

    def hf_weights(self) -> dict[str, mx.array]:
        """The parameters under Phi-3's checkpoint keys (q/k/v and gate/up fused again)."""
        return join_fused(dict(tree_flatten(self.parameters())), self.args.fused())


def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Phi-3 config: GQA (Phi-3-medium style), partial RoPE over 3/4 of each head (as
    Phi-4-mini) and a sliding window of 8 (Phi-3-mini sets 2047), untied head."""
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "partial_rotary_factor": 0.75,
        "sliding_window": 8,
        "tie_word_embeddings": False,
    }
