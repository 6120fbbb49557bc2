"""The decoder every family configures: :class:`TransformerArgs` and :class:`CausalLM`.

A family module subclasses :class:`TransformerArgs` (adding its own HF config fields and
overriding the few properties that differ, such as ``attention_scale`` or ``embedding_scale``)
and :class:`CausalLM` (setting ``family`` and ``Args``). The module tree mirrors Hugging Face
checkpoint names, so ``tree_flatten(model.parameters())`` yields HF keys::

    model.embed_tokens.weight
    model.layers.{i}.input_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (.bias)
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.{pre,post}_feedforward_layernorm.weight    (sandwich-norm families)
    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    model.norm.weight
    lm_head.weight                                              (absent when embeddings are tied)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

import attrs
import mlx.core as mx
import mlx.nn as nn

from lazarus.errors import LazarusError
from lazarus.models.attention import Attention, Mask, attention_mask
from lazarus.models.cache import KVCache, StaticKVCache, static_mask
from lazarus.models.hooks import HookedModel, HookRegistry
from lazarus.models.mlp import GatedMLP
from lazarus.models.norms import RMSNorm
from lazarus.models.rope import RoPE, rope_from_hf_config

_Args = TypeVar("_Args", bound="TransformerArgs")


@attrs.define(kw_only=True)
class TransformerArgs:
    """Hyper-parameters of a Llama-style decoder, named as in HF ``config.json``.

    Families subclass it, add their own fields and override the behaviour properties below
    (``attention_scale``, ``embedding_scale``, ``residual_scale``, ``logits_divisor``,
    ``attn_softcap``, ``final_softcap``, ``qkv_bias``, ``o_bias``, ``activation``, ``qk_norm``,
    ``norm_eps``, ``rope_dims``, ``window_for_layer``, ``rope_for_layer``, ``norm``) and class
    attributes (``norm_offset``, ``sandwich_norms``, ``mlp_class``).
    """

    #: Gemma stores norm weights centred on 0 and scales by (1 + w)
    norm_offset: ClassVar[float] = 0.0
    #: Gemma-2 also norms each branch's output and uses a separate pre-MLP norm
    sandwich_norms: ClassVar[bool] = False
    #: the MLP module: built as ``mlp_class(hidden, intermediate, activation, bias=, hooks=, post_hook=)``
    mlp_class: ClassVar[type] = GatedMLP

    model_type: str = ""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    #: None for plain RoPE, else ``{"rope_type": "linear"|"llama3", "factor": ..., ...}``
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    #: per layer "full_attention" / "sliding_attention" (HF's newer configs); None = all full
    layer_types: list | None = None

    @classmethod
    def from_hf_config(cls: type[_Args], config: dict) -> _Args:
        """Build the args from a Hugging Face ``config.json`` dict (transformers 4 or 5 layout).

        Keys the class does not know are ignored; a missing required key raises LazarusError.
        """
        fields = {field.name: field for field in attrs.fields(cls)}
        # an explicit null means "off" where the field allows None (a soft cap, a window) and
        # "use the default" elsewhere, as in HF's config classes
        values = {k: v for k, v in config.items()
                  if k in fields and (v is not None or "None" in str(fields[k].type))}
        values["rope_theta"], values["rope_scaling"] = rope_from_hf_config(config)
        missing = [f.name for f in attrs.fields(cls)
                   if f.default is attrs.NOTHING and f.name not in values]
        if missing:
            raise LazarusError(
                f"config.json has no {', '.join(repr(m) for m in missing)}, which a "
                f"{config.get('model_type', '?')} model needs"
            )
        return cls(**values)

    def __attrs_post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LazarusError(f"config.json {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.kv_heads:
            raise LazarusError(
                f"config.json num_attention_heads ({self.num_attention_heads}) must be a multiple "
                f"of num_key_value_heads ({self.kv_heads})"
            )
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise LazarusError(
                f"config.json layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    # -- behaviour families override -----------------------------------------------------------
    @property
    def attention_scale(self) -> float:
        """Multiplier of q·k before softmax."""
        return self.dim_per_head ** -0.5

    @property
    def embedding_scale(self) -> float | None:
        """Multiplier of the token embeddings (applied in the model dtype), None for none."""
        return None

    @property
    def residual_scale(self) -> float:
        """Multiplier of each branch's output before it is added to the residual stream."""
        return 1.0

    @property
    def logits_divisor(self) -> float | None:
        """Logits are divided by this (Granite's ``logits_scaling``), None for none."""
        return None

    @property
    def attn_softcap(self) -> float | None:
        return None

    @property
    def final_softcap(self) -> float | None:
        return None

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def activation(self) -> str:
        """The MLP's activation as an HF ``hidden_act`` name."""
        return self.hidden_act

    @property
    def qk_norm(self) -> bool:
        """Whether attention norms each head's queries and keys (``self_attn.q_norm`` / ``k_norm``)."""
        return False

    @property
    def norm_eps(self) -> float:
        """The epsilon of every norm (families that name it differently override this)."""
        return self.rms_norm_eps

    @property
    def rope_dims(self) -> int:
        """How many features of each head RoPE rotates (fewer than ``dim_per_head`` for partial RoPE)."""
        return self.dim_per_head

    def norm(self, dims: int) -> nn.Module:
        """A norm over ``dims`` features as this family uses them (RMSNorm unless overridden)."""
        return RMSNorm(dims, self.norm_eps, self.norm_offset)

    def window_for_layer(self, layer: int) -> int | None:
        """The sliding-window size of layer ``layer``, None for full attention."""
        if self.sliding_window and self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def rope_for_layer(self, layer: int) -> tuple[float, dict | None]:
        """``(theta, scaling)`` of layer ``layer``'s RoPE (Gemma 3 gives sliding layers their own)."""
        return self.rope_theta, self.rope_scaling

    def fused(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """The checkpoint's fused layers (``"self_attn.qkv_proj"`` -> ``((part, rows), ...)``) that
        this family splits on load (Phi-3); none by default."""
        return {}


class DecoderBlock(nn.Module):
    """One pre-norm decoder layer: ``x + attn(norm(x))`` then ``h + mlp(norm(h))``.

    With ``args.sandwich_norms`` (Gemma-2) each branch output is normed again before it is added
    (``post_attention_layernorm``, ``post_feedforward_layernorm``) and the MLP reads
    ``pre_feedforward_layernorm(h)``; otherwise ``post_attention_layernorm`` is the pre-MLP norm,
    as in Llama checkpoints.
    """

    def __init__(self, args: TransformerArgs, layer: int, rope: RoPE, hooks: HookRegistry):
        super().__init__()
        hidden, head_dim = args.hidden_size, args.dim_per_head
        qk_norms = (args.norm(head_dim), args.norm(head_dim)) if args.qk_norm else (None, None)
        self.self_attn = Attention(
            hidden, args.num_attention_heads, args.kv_heads, head_dim, rope=rope,
            scale=args.attention_scale, qkv_bias=args.qkv_bias, o_bias=args.o_bias,
            softcap=args.attn_softcap, hooks=hooks, pattern_hook=f"blocks.{layer}.attn.hook_pattern",
            z_hook=f"blocks.{layer}.attn.hook_z", q_norm=qk_norms[0], k_norm=qk_norms[1],
        )
        self.mlp = args.mlp_class(hidden, args.intermediate_size, args.activation, bias=args.mlp_bias,
                                  hooks=hooks, post_hook=f"blocks.{layer}.mlp.hook_post")
        self.input_layernorm = args.norm(hidden)
        self.post_attention_layernorm = args.norm(hidden)
        self.sandwich = args.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = args.norm(hidden)
            self.post_feedforward_layernorm = args.norm(hidden)
        self.window = args.window_for_layer(layer)
        self.residual_scale = args.residual_scale
        self._hooks = hooks
        prefix = f"blocks.{layer}."
        self._names = tuple(prefix + n for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid",
                                                  "hook_mlp_out", "hook_resid_post"))

    def __call__(self, x: mx.array, mask: Mask = None, cache: KVCache | None = None) -> mx.array:
        hooked = bool(self._hooks.fns)
        fire = self._hooks.fire
        resid_pre, attn_out, resid_mid, mlp_out, resid_post = self._names
        if hooked:
            x = fire(resid_pre, x)

        attn = self.self_attn(self.input_layernorm(x), mask, cache)
        if self.sandwich:
            attn = self.post_attention_layernorm(attn)
        if self.residual_scale != 1.0:
            attn = attn * self.residual_scale
        if hooked:
            attn = fire(attn_out, attn)
        h = x + attn
        if hooked:
            h = fire(resid_mid, h)

        if self.sandwich:
            mlp = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        else:
            mlp = self.mlp(self.post_attention_layernorm(h))
        if self.residual_scale != 1.0:
            mlp = mlp * self.residual_scale
        if hooked:
            mlp = fire(mlp_out, mlp)
        out = h + mlp
        if hooked:
            out = fire(resid_post, out)
        return out


class DecoderModel(nn.Module):
    """The HF ``model.`` sub-tree: ``embed_tokens``, ``layers``, ``norm``."""

    def __init__(self, args: TransformerArgs, hooks: HookRegistry,
                 block_class: Callable[..., nn.Module] = DecoderBlock):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        ropes: dict[str, RoPE] = {}  # one RoPE per distinct setting, shared by the layers using it
        self.layers: list[nn.Module] = []
        for i in range(args.num_hidden_layers):
            theta, scaling = args.rope_for_layer(i)
            key = f"{theta!r}/{sorted((scaling or {}).items())!r}"
            rope = ropes.setdefault(key, RoPE(args.rope_dims, theta, scaling))
            self.layers.append(block_class(args, i, rope, hooks))
        self.norm = args.norm(args.hidden_size)


@attrs.frozen
class ModelSource:
    """Where a loaded model came from (set by the loader as ``model.source``; used for provenance)."""

    model: str  #: what the user passed: a hub id or a path
    path: str  #: the local directory read
    family: str
    weight_files: tuple[str, ...] = ()
    adapter_path: str | None = None


class CausalLM(HookedModel, nn.Module):
    """A decoder-only language model: ``model(ids, cache=None, mask=None) -> logits``.

    ``ids``: int (B, T). ``cache``: the list from :meth:`make_cache` (one :class:`KVCache` per
    block), updated in place. ``mask``: optional (B, S) 1/0 marking real keys for left-padded
    batches, where S = cached length + T; it may also cover only the T new tokens, or be left out
    after the first call, since the cache remembers the mask of what it holds. Positions are
    shared by the batch; RoPE is relative, so a left-padded row gives its unpadded logits.

    Common parts: :meth:`embed`, ``blocks``, ``ln_final``, :meth:`unembed`, ``args``, ``family``;
    hooks: see :mod:`lazarus.models.hooks`.
    """

    family: ClassVar[str] = ""
    #: the GGUF (llama.cpp) architecture this family's checkpoints export as, when llama.cpp runs
    #: it exactly (``lazarus export gguf``); None: no GGUF export
    gguf_architecture: ClassVar[str | None] = None
    #: the block every layer is, built as ``block_class(args, layer, rope, hooks)``: a family with
    #: another block shape (MoE, parallel residual) supplies its own (a :class:`DecoderBlock`
    #: subclass, or any module with ``window`` and ``__call__(x, mask, cache)``)
    block_class: ClassVar[type[nn.Module]] = DecoderBlock

    def __init__(self, args: TransformerArgs):
        super().__init__()
        self.args = args
        self._hook_registry = HookRegistry()
        self.model = DecoderModel(args, self._hook_registry, self.block_class)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self._windows = tuple(sorted({b.window for b in self.model.layers}, key=lambda w: (w is not None, w or 0)))
        self.source: ModelSource | None = None

    # -- common parts --------------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        return self.model.layers

    @property
    def layers(self) -> list[nn.Module]:
        """Same as ``blocks``, under mlx-lm's name, for tools written against mlx-lm models."""
        return self.model.layers

    @property
    def ln_final(self) -> nn.Module:
        return self.model.norm

    def embed(self, ids: mx.array) -> mx.array:
        """Token embeddings (B, T, D), including any family scale; fires ``hook_embed``."""
        h = self.model.embed_tokens(ids)
        scale = self.args.embedding_scale
        if scale is not None:
            h = h * mx.array(scale, dtype=h.dtype)
        if self._hook_registry.fns:
            h = self._hook_registry.fire("hook_embed", h)
        return h

    def unembed(self, h: mx.array) -> mx.array:
        """Logits (B, T, vocab) from final-normed hidden states, with scaling and soft-capping."""
        if self.args.tie_word_embeddings:
            logits = self.model.embed_tokens.as_linear(h)
        else:
            logits = self.lm_head(h)
        if self.args.logits_divisor is not None:
            logits = logits / self.args.logits_divisor
        cap = self.args.final_softcap
        if cap is not None:
            logits = mx.tanh(logits / cap) * cap
        return logits

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, ids: mx.array, cache: list[KVCache] | None = None, mask: Any = None) -> mx.array:
        return self.unembed(self.final_hidden(ids, cache, mask))

    def final_hidden(self, ids: mx.array, cache: list[KVCache] | None = None, mask: Any = None) -> mx.array:
        """The final-normed hidden states (B, T, hidden) that :meth:`unembed` turns into logits
        (``ln_final.hook_normalized`` fired); arguments as for calling the model. Scorers that need
        a few positions' logits, or the logits chunk by chunk, start here."""
        if ids.ndim != 2:
            raise LazarusError(f"model input must be token ids of shape (batch, length), got {ids.shape}")
        h = self.embed(ids)
        offset = cache[0].offset if cache else 0
        if cache and isinstance(cache[0], StaticKVCache):  # the compiled decode step's cache
            capacity, key_mask = cache[0].capacity, cache[0].key_mask
            masks = {w: static_mask(ids.shape[1], offset, capacity, key_mask, w) for w in self._windows}
        else:
            key_mask = self._key_mask(mask, cache, ids.shape[0], ids.shape[1], offset)
            masks = {w: attention_mask(ids.shape[1], offset, key_mask, w) for w in self._windows}
        for i, block in enumerate(self.model.layers):
            h = block(h, masks[block.window], cache[i] if cache else None)
        h = self.model.norm(h)
        if self._hook_registry.fns:
            h = self._hook_registry.fire("ln_final.hook_normalized", h)
        return h

    @staticmethod
    def _key_mask(mask, cache, batch: int, new: int, offset: int) -> mx.array | None:
        remembered = cache[0].key_mask if cache else None
        if mask is None:
            if remembered is None:
                return None
            key_mask = mx.concatenate([remembered, mx.ones((batch, new), dtype=mx.bool_)], axis=1)
        else:
            mask = mx.array(mask).astype(mx.bool_)
            if mask.ndim != 2 or mask.shape[0] != batch:
                raise LazarusError(f"mask must have shape (batch={batch}, positions), got {mask.shape}")
            if mask.shape[1] == offset + new:
                key_mask = mask
            elif mask.shape[1] == new:
                earlier = remembered if remembered is not None else mx.ones((batch, offset), dtype=mx.bool_)
                key_mask = mx.concatenate([earlier, mask], axis=1)
            else:
                raise LazarusError(
                    f"mask covers {mask.shape[1]} positions; expected {offset + new} "
                    f"(cached {offset} + new {new}) or {new}"
                )
        for c in cache or ():
            c.key_mask = key_mask
        return key_mask

    def make_cache(self) -> list[KVCache]:
        """A fresh KV cache, one :class:`KVCache` per block."""
        return [KVCache() for _ in self.model.layers]

    # -- checkpoint layout (defaults; a family whose module tree differs overrides both) ---------
    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The checkpoint's tensors as this model's parameters: :func:`sanitize_weights` by default
        (Phi-3 also splits its fused layers)."""
        return sanitize_weights(weights, self.args)

    def hf_weights(self) -> dict[str, mx.array]:
        """The parameters under the checkpoint's keys (the inverse of :meth:`sanitize`): the
        flattened parameters by default."""
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.parameters()))

    @property
    def num_parameters(self) -> int:
        from mlx.utils import tree_flatten

        return sum(v.size for _, v in cast("list[tuple[str, mx.array]]", tree_flatten(self.parameters())))


def sanitize_weights(weights: dict[str, mx.array], args: TransformerArgs | None = None) -> dict[str, mx.array]:
    """Drop what HF checkpoints carry but the model computes itself.

    Removes precomputed rotary ``inv_freq`` buffers and, for tied embeddings, ``lm_head.weight``.
    """
    out = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    if args is not None and args.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def gemma_embedding_scale(hidden_size: int) -> float:
    """``sqrt(hidden_size)``, the scale Gemma families put on token embeddings."""
    return math.sqrt(hidden_size)
