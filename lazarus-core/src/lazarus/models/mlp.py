"""The gated MLP of Llama-style decoders: ``down(act(gate(x)) * up(x))``."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from lazarus.errors import LazarusError
from lazarus.models.fused import ProjectionGroup
from lazarus.models.hooks import HookRegistry


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU with the tanh approximation (PyTorch's ``gelu(approximate="tanh")``)."""
    return 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


#: Hugging Face ``hidden_act`` names -> function
ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu_tanh": gelu_tanh,
    "gelu": nn.gelu,  # exact (erf) GELU
}


def activation(name: str):
    """The activation function for a Hugging Face ``hidden_act`` name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise LazarusError(
            f"unsupported activation {name!r} (config.json hidden_act); supported: "
            f"{', '.join(sorted(ACTIVATIONS))}"
        ) from None


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``; names match HF checkpoints."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False,
                 hooks: HookRegistry | None = None, post_hook: str = "mlp.hook_post"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self._act = activation(act)
        self._hooks = hooks or HookRegistry()
        self._post_hook = post_hook
        self._gate_up: ProjectionGroup | None = None  # gate/up as one matmul (lazarus.models.fused)

    def __call__(self, x: mx.array) -> mx.array:
        fused = self._gate_up(self, x) if self._gate_up is not None else None
        if fused is None:
            fused = self.gate_proj(x), self.up_proj(x)
        gate, up = fused
        hidden = self._act(gate) * up  # (B, T, intermediate)
        if self._hooks.fns:
            hidden = self._hooks.fire(self._post_hook, hidden)
        return self.down_proj(hidden)
