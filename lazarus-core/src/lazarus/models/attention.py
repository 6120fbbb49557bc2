"""Multi-head attention with grouped-query heads, a KV cache, sliding windows, soft-capping and
optional per-head q/k norms."""

from __future__ import annotations

from typing import cast

import mlx.core as mx
import mlx.nn as nn

from lazarus.models.fused import ProjectionGroup
from lazarus.models.hooks import HookRegistry
from lazarus.models.rope import RoPE

#: an attention mask as the blocks receive it: None (attend to everything), "causal", or a bool
#: array broadcastable to (B, H, T, S) with True where a query may attend to a key
Mask = mx.array | str | None


def attention_mask(num_new: int, offset: int, key_mask: mx.array | None = None,
                   window: int | None = None) -> Mask:
    """The mask for ``num_new`` queries at positions ``offset..offset+num_new-1`` over ``offset+num_new`` keys.

    ``key_mask`` is a (B, S) 1/0 array of real keys (left padding is 0); ``window`` keeps only the
    last ``window`` positions (query included), as HF's sliding-window layers do. Returns None or
    ``"causal"`` when the fused kernel can build the mask itself. A query always sees itself, so
    the rows of pad queries stay finite instead of becoming NaN and leaking through 0 * NaN.
    """
    total = offset + num_new
    windowed = window is not None and total > window
    if key_mask is None and not windowed:
        return None if num_new == 1 else "causal"
    query_pos = mx.arange(offset, total)[:, None]
    key_pos = mx.arange(total)[None]
    allowed = key_pos <= query_pos
    if window is not None and windowed:
        allowed = allowed & (query_pos - key_pos < window)
    if key_mask is None:
        return allowed
    real_key = key_mask.astype(mx.bool_)[:, None, :] | (key_pos == query_pos)[None]
    return (allowed[None] & real_key)[:, None]  # (B, 1, T, S)


class Attention(nn.Module):
    """Self-attention over ``(B, T, hidden)``; projection names match HF (``q_proj`` ... ``o_proj``).

    ``num_kv_heads < num_heads`` is grouped-query attention. ``scale`` multiplies q·k;
    ``softcap`` applies ``cap * tanh(scores / cap)`` before the mask (Gemma-2). Without a soft cap
    or an active pattern hook it runs the fused ``mx.fast.scaled_dot_product_attention``.
    ``q_norm`` / ``k_norm`` (Qwen3, Gemma 3) normalise each head's query and key over ``head_dim``
    before RoPE; they are stored as ``self_attn.q_norm`` / ``self_attn.k_norm`` as in HF.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope: RoPE, scale: float, qkv_bias: bool = False, o_bias: bool = False,
                 softcap: float | None = None, hooks: HookRegistry | None = None,
                 pattern_hook: str = "attn.hook_pattern", z_hook: str = "attn.hook_z",
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.has_qk_norm = q_norm is not None
        if q_norm is not None:  # (k_norm comes with it)
            self.q_norm, self.k_norm = q_norm, cast("nn.Module", k_norm)
        self.scale = scale
        self.softcap = softcap
        self._rope = rope
        self._hooks = hooks or HookRegistry()
        self._pattern_hook = pattern_hook
        self._z_hook = z_hook
        self._qkv: ProjectionGroup | None = None  # q/k/v as one matmul (lazarus.models.fused)

    def __call__(self, x: mx.array, mask: Mask = None, cache=None) -> mx.array:
        batch, length, _ = x.shape
        fused = self._qkv(self, x, self.head_dim) if self._qkv is not None else None
        if fused is None:
            fused = (self.q_proj(x).reshape(batch, length, self.num_heads, -1),
                     self.k_proj(x).reshape(batch, length, self.num_kv_heads, -1),
                     self.v_proj(x).reshape(batch, length, self.num_kv_heads, -1))
        queries, keys, values = fused  # (B, T, heads, head_dim)
        if self.has_qk_norm:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        queries = queries.transpose(0, 2, 1, 3)
        keys = keys.transpose(0, 2, 1, 3)
        values = values.transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        queries = self._rope(queries, offset)
        keys = self._rope(keys, offset)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)

        hooks = self._hooks.fns
        if self.softcap is None and not (hooks and self._pattern_hook in hooks):
            out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=self.scale, mask=mask)
        else:
            out = self._explicit(queries, keys, values, mask)
        out = out.transpose(0, 2, 1, 3)  # (B, T, H, Dh): per-head outputs
        if hooks:
            out = self._hooks.fire(self._z_hook, out)
        return self.o_proj(out.reshape(batch, length, -1))

    def _explicit(self, queries, keys, values, mask: Mask) -> mx.array:
        """Attention with the probabilities formed, for soft-capping and the pattern hook."""
        repeats = self.num_heads // self.num_kv_heads
        if repeats > 1:
            keys = mx.repeat(keys, repeats, axis=1)
            values = mx.repeat(values, repeats, axis=1)
        scores = (queries @ keys.swapaxes(-1, -2)) * self.scale  # (B, H, T, S)
        if self.softcap is not None:
            scores = mx.tanh(scores / self.softcap) * self.softcap
        if isinstance(mask, str):  # "causal": queries are the last `length` of `total` positions
            length, total = scores.shape[-2:]
            mask = mx.arange(total - length, total)[:, None] >= mx.arange(total)[None]
        if mask is not None:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        probs = mx.softmax(scores, axis=-1, precise=True)
        if self._hooks.fns:
            probs = self._hooks.fire(self._pattern_hook, probs)
        return probs @ values
