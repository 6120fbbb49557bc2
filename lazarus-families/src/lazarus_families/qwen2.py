"""Qwen2 / Qwen2.5: Llama with biases on the q/k/v projections (not on o_proj).

Qwen2 can also use sliding windows in the layers from ``max_window_layers`` on, when
``use_sliding_window`` is true (off in the released checkpoints).
"""

from __future__ import annotations

import attrs

from lazarus.models.transformer import CausalLM, TransformerArgs


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    model_type: str = "qwen2"
    use_sliding_window: bool = False
    max_window_layers: int = 28

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.layer_types is None:  # HF derives them this way when the config does not list them
            window = self.sliding_window if self.use_sliding_window else None
            self.layer_types = [
                "sliding_attention" if window is not None and i >= self.max_window_layers else "full_attention"
                for i in range(self.num_hidden_layers)
            ]

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def o_bias(self) -> bool:
        return False

    def window_for_layer(self, layer: int) -> int | None:
        if not self.use_sliding_window:
            return None
        return super().window_for_layer(layer)


class Model(CausalLM):
    family = "qwen2"
    gguf_architecture = "qwen2"  # without sliding windows



def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Qwen2.5-style config: GQA, q/k/v biases, tied embeddings, rope_theta 1e6."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 2,
        "tie_word_embeddings": True,
    }
