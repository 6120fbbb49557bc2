"""DoRA: LoRA whose adapted weight is renormalised row by row to a learned magnitude ``m``.

With ``W' = W + scale * (lora_a @ lora_b).T`` (shape out x in) the layer computes
``y = (m / ||W'||_row) * (x @ W'.T) + b``, where the row norms are treated as constants for the
gradient (as in the DoRA paper and mlx-lm). ``m`` (out,) starts at the row norms of ``W`` (in
float32), so a fresh adapter leaves the model unchanged. On disk DoRA adds ``...q_proj.m`` next to
``lora_a`` / ``lora_b``, the key mlx-lm uses.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from lazarus.adapters.lora import LoRALinear, LowRankAdapter, dense_weight, rebuild_linear


class DoRALinear(LoRALinear):
    """A linear layer with a DoRA update. Build it with :meth:`wrap` around an existing layer."""

    adapter_leaves: tuple[str, ...] = ("lora_a", "lora_b", "m")

    def __init__(self, linear: nn.Module, rank: int = 8, scale: float = 20.0, dropout: float = 0.0):
        super().__init__(linear, rank=rank, scale=scale, dropout=dropout)
        self.m = mx.linalg.norm(dense_weight(linear).astype(mx.float32), axis=1)

    def __call__(self, x: mx.array) -> mx.array:
        weight = dense_weight(self.linear)
        update = (self.dropout(x) @ self.lora_a) @ self.lora_b
        y = x @ weight.T + (self.scale * update).astype(x.dtype)
        # The norm of the adapted rows is a constant for the gradient: only m carries magnitude.
        row_norm = mx.stop_gradient(mx.linalg.norm(weight + self.delta(), axis=1))
        y = (self.m / row_norm).astype(x.dtype) * y
        if "bias" in self.linear:
            y = y + self.linear.bias
        return y

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """A plain linear layer computing the same function (rows of ``W'`` rescaled to ``m``)."""
        weight = dense_weight(self.linear)
        adapted = weight + self.delta().astype(weight.dtype)
        rescale = self.m / mx.linalg.norm(adapted, axis=1)
        return rebuild_linear(self.linear, (rescale[:, None] * adapted).astype(weight.dtype), dequantize)


class DoRAAdapter(LowRankAdapter):
    name = "dora"
    layer_class = DoRALinear


#: the ``dora`` adapter type registered by the core
DORA = DoRAAdapter()
