"""RMSNorm, including Gemma's variant that scales by ``(1 + weight)``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class RMSNorm(nn.Module):
    """``x / rms(x) * (offset + weight)`` over the last axis.

    ``offset=0`` is the Llama norm (weight initialised to ones); ``offset=1`` is Gemma's, whose
    checkpoints store ``weight`` centred on zero. Gemma's reference computes the norm and the
    ``1 + w`` in float32 and casts back, so the offset variant does the same; the plain one uses
    the fused kernel in the input dtype as Llama's reference does.
    """

    def __init__(self, dims: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.weight = mx.zeros((dims,)) if offset else mx.ones((dims,))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: mx.array) -> mx.array:
        if not self.offset:
            return mx.fast.rms_norm(x, self.weight, self.eps)
        scale = self.offset + self.weight.astype(mx.float32)
        return mx.fast.rms_norm(x.astype(mx.float32), scale, self.eps).astype(x.dtype)

    def _extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}"
