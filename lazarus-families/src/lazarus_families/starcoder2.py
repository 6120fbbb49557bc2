"""StarCoder2: LayerNorm (with bias) instead of RMSNorm, a non-gated MLP
``c_proj(act(c_fc(x)))`` (GELU-tanh in the released configs), biases on every projection
(``use_bias``), ``norm_epsilon`` for the norms and a sliding window on every layer when
``sliding_window`` is set."""

from __future__ import annotations

import attrs
import mlx.core as mx
import mlx.nn as nn

from lazarus.models.hooks import HookRegistry
from lazarus.models.mlp import activation
from lazarus.models.transformer import CausalLM, TransformerArgs


class MLP(nn.Module):
    """``c_proj(act(c_fc(x)))``; names match StarCoder2 checkpoints."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu_pytorch_tanh",
                 bias: bool = True, hooks: HookRegistry | None = None, post_hook: str = "mlp.hook_post"):
        super().__init__()
        self.c_fc = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.c_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self._act = activation(act)
        self._hooks = hooks or HookRegistry()
        self._post_hook = post_hook

    @property
    def down_proj(self) -> nn.Module:
        """The output projection under the name every family's MLP has (neuron probes use it)."""
        return self.c_proj

    def __call__(self, x: mx.array) -> mx.array:
        hidden = self._act(self.c_fc(x))  # (B, T, intermediate)
        if self._hooks.fns:
            hidden = self._hooks.fire(self._post_hook, hidden)
        return self.c_proj(hidden)


@attrs.define(kw_only=True)
class ModelArgs(TransformerArgs):
    mlp_class = MLP

    model_type: str = "starcoder2"
    hidden_act: str = "gelu_pytorch_tanh"
    norm_epsilon: float = 1e-5
    use_bias: bool = True
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.mlp_bias = self.use_bias

    @property
    def norm_eps(self) -> float:
        return self.norm_epsilon

    @property
    def qkv_bias(self) -> bool:
        return self.use_bias

    @property
    def o_bias(self) -> bool:
        return self.use_bias

    def norm(self, dims: int) -> nn.Module:
        return nn.LayerNorm(dims, eps=self.norm_epsilon)

    def window_for_layer(self, layer: int) -> int | None:
        return self.sliding_window or None


class Model(CausalLM):
    family = "starcoder2"


def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer StarCoder2 config: GQA, biases everywhere, GELU-tanh, a sliding window of 8, tied."""
    return {
        "architectures": ["Starcoder2ForCausalLM"],
        "model_type": "starcoder2",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "max_position_embeddings": 4096,
        "norm_epsilon": 1e-5,
        "rope_theta": 100000.0,
        "use_bias": True,
        "sliding_window": 8,
        "tie_word_embeddings": True,
    }
