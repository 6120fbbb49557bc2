"""Shared model pieces every family is built from.

- :mod:`lazarus.models.norms`: RMSNorm (with Gemma's ``(1 + w)`` variant)
- :mod:`lazarus.models.rope`: rotary embeddings (default, linear, llama3) from either HF config layout
- :mod:`lazarus.models.attention`: attention with grouped-query heads, KV cache, sliding window, soft-capping
- :mod:`lazarus.models.mlp`: the gated MLP (SiLU / GELU-tanh / GELU)
- :mod:`lazarus.models.cache`: :class:`KVCache`
- :mod:`lazarus.models.hooks`: TransformerLens-named hook points, ``run_with_cache`` / ``run_with_hooks``
- :mod:`lazarus.models.transformer`: :class:`TransformerArgs` and :class:`CausalLM`, the decoder a family configures
- :mod:`lazarus.models.create`: random checkpoints in Hugging Face layout (``lazarus models create``)

Importing this package imports mlx.
"""

from lazarus.models.cache import KVCache
from lazarus.models.hooks import HOOK_NAMES_HELP, HookRegistry
from lazarus.models.transformer import CausalLM, TransformerArgs

__all__ = ["CausalLM", "HOOK_NAMES_HELP", "HookRegistry", "KVCache", "TransformerArgs"]
