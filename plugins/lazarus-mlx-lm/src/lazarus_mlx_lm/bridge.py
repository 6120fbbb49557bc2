"""mlx-lm's model classes as a Lazarus family.

``ModelArgs.from_hf_config(config)`` finds ``mlx_lm.models.<model_type>`` (after mlx-lm's own
remapping, e.g. mistral -> llama) and builds its ``ModelArgs``; ``Model(args)`` builds mlx-lm's
``Model`` as a subclass that adds the Lazarus parts: ``blocks`` (mlx-lm's layers), ``embed``,
``ln_final``, ``unembed``, ``make_cache`` and these hook points:

- ``hook_embed`` (the token embedding's output, before any model-specific scale),
- ``blocks.{L}.hook_resid_pre`` / ``blocks.{L}.hook_resid_post`` (each layer's input and output),
- ``ln_final.hook_normalized`` (the final norm's output).

The final norm is found by where it sits (beside the blocks, in the head, or a weightless function of
the architecture's module), the head by what it maps to (the vocabulary), and the logits get the
scaling or soft-cap mlx-lm's ``Model`` applies, so the logit lens runs on the architectures mlx-lm
ships (79 of the 80 that a generic tiny config builds; granitemoehybrid needs its own layer types).
Hook points inside a block (``hook_attn_out``, ``hook_mlp_out``, ``attn.hook_pattern`` ...) are not
fired: mlx-lm's blocks are not split where the bridge could hook them (``plugins show`` says so).

The module tree is mlx-lm's, which for most architectures is the Hugging Face checkpoint's, so
weights load through mlx-lm's ``sanitize`` and LoRA adapters (Lazarus's, applied to ``blocks``)
carry mlx-lm's keys. Left-padded batches need a mask the mlx-lm models do not take, so a padded
``mask`` is refused; generation of one prompt (or unpadded batches) works.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from lazarus.errors import LazarusError
from lazarus.models.hooks import HookedModel, HookRegistry
from lazarus.models.transformer import sanitize_weights

FAMILY = "mlx-lm"
#: names of the final norm, most likely first, when a model holds more than one norm beside its layers
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "final_layernorm", "final_norm", "norm_f", "ln_f",
                    "output_norm", "ln_post", "ln_final")
#: names of an output projection that is not ``lm_head`` (looked for when the model has none)
HEAD_NAMES = ("embed_out", "output", "head", "out_proj", "lm_head")
#: TransformerLens hook points a bridged model does not fire (mlx-lm's blocks are not split into
#: attention and MLP halves the bridge could hook without rewriting each architecture)
MISSING_HOOKS = ("blocks.{L}.hook_attn_out", "blocks.{L}.hook_mlp_out", "blocks.{L}.hook_resid_mid",
                 "blocks.{L}.attn.hook_pattern", "blocks.{L}.attn.hook_z", "blocks.{L}.mlp.hook_post")


def _module_name(model_type: str) -> str:
    try:
        from mlx_lm.utils import MODEL_REMAPPING
    except ImportError:  # pragma: no cover - older or newer mlx-lm layouts
        MODEL_REMAPPING = {}
    return MODEL_REMAPPING.get(model_type, model_type)


def supports(config: dict) -> bool:
    """Whether mlx-lm has a model for this config's ``model_type`` (the loader asks before using the
    bridge, so an unknown type still gets the loader's list of installed families)."""
    import importlib.util

    name = _module_name(str(config.get("model_type") or ""))
    return bool(name) and name.replace("_", "").replace("-", "").isalnum() and (
        importlib.util.find_spec(f"mlx_lm.models.{name}") is not None)


def architecture(model_type: str) -> ModuleType:
    """mlx-lm's module for ``model_type`` (its remapping applied), or a LazarusError."""
    name = _module_name(model_type)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise LazarusError(f"config.json model_type {model_type!r} is not a model type mlx-lm knows")
    try:
        return importlib.import_module(f"mlx_lm.models.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"mlx_lm.models.{name}":
            raise LazarusError(f"mlx-lm's {name} model needs {exc.name}, which is not installed") from None
        import mlx_lm

        raise LazarusError(f"model_type {model_type!r}: neither an installed Lazarus family nor mlx-lm "
                           f"{mlx_lm.__version__} supports it; upgrade mlx-lm or write a family plugin "
                           "(docs/plugins.md)") from None


class ModelArgs:
    """The mlx-lm module of the architecture and its own ``ModelArgs``; other attributes (sizes,
    ``tie_word_embeddings`` ...) are read from mlx-lm's args."""

    def __init__(self, module: ModuleType, inner, config: dict):
        self.module, self.inner, self.config = module, inner, config

    @classmethod
    def from_hf_config(cls, config: dict) -> ModelArgs:
        module = architecture(str(config.get("model_type", "")))
        try:
            inner = module.ModelArgs.from_dict(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise LazarusError(f"config.json does not fit mlx-lm's {module.__name__.rsplit('.', 1)[-1]} "
                               f"model: {exc}") from None
        return cls(module, inner, config)

    def __getattr__(self, name: str):
        if name in ("module", "inner", "config"):
            raise AttributeError(name)
        try:
            return getattr(self.inner, name)
        except AttributeError:
            if name in self.config:
                return self.config[name]
            raise

    @property
    def num_hidden_layers(self) -> int:
        return getattr(self.inner, "num_hidden_layers", None) or self.config.get("num_hidden_layers")

    # what `lazarus models info` shows, as far as a config in HF naming tells it
    @property
    def kv_heads(self) -> int | None:
        return self.config.get("num_key_value_heads") or self.config.get("num_attention_heads")

    @property
    def dim_per_head(self) -> int | None:
        heads = self.config.get("num_attention_heads")
        return self.config.get("head_dim") or (self.config.get("hidden_size", 0) // heads if heads else None)

    @property
    def rope_theta(self) -> float | None:
        return getattr(self.inner, "rope_theta", self.config.get("rope_theta"))

    @property
    def rope_scaling(self) -> dict | None:
        return getattr(self.inner, "rope_scaling", self.config.get("rope_scaling"))

    def window_for_layer(self, layer: int) -> int | None:
        return None  # not known across architectures; mlx-lm's model applies its own

    def fused(self) -> dict:
        """The model contract's fused checkpoint layers: mlx-lm's models load theirs themselves."""
        return {}

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.inner, "tie_word_embeddings", self.config.get("tie_word_embeddings", False)))


def _norm_child(module: nn.Module):
    """The final-norm candidate among ``module``'s direct children: a module whose class is a norm,
    not one applied to the embedding or at a block's input; by FINAL_NORM_NAMES when several."""
    norms = {name: child for name, child in module.items()
             if isinstance(child, nn.Module) and "norm" in type(child).__name__.lower()
             and not any(part in name.lower() for part in ("embed", "pre", "input", "per_layer"))}
    for name in FINAL_NORM_NAMES:
        if name in norms:
            return norms[name]
    return next(iter(norms.values())) if len(norms) == 1 else None


class _Identity(nn.Module):
    """``ln_final`` of a model whose head normalises (the norm is part of ``unembed``)."""

    def __call__(self, x):
        return x


class _FunctionalNorm(nn.Module):
    """``ln_final`` of a model whose final norm is a weightless function of its module."""

    def __init__(self, function, eps: float):
        super().__init__()
        import inspect

        takes_eps = len(inspect.signature(function).parameters) > 1
        self.__dict__.update(_apply=(lambda x: function(x, eps)) if takes_eps else function)

    def __call__(self, x):
        return self._apply(x)


class _Fires(nn.Module):
    """Mixed into a module's class so that its output (and, for a block, its input) fire hooks."""

    def __call__(self, x, *args, **kwargs):
        registry: HookRegistry = self._lazarus_hooks
        if registry.fns and self._lazarus_pre:
            x = registry.fire(self._lazarus_pre, x)
        out = super().__call__(x, *args, **kwargs)
        if registry.fns and isinstance(out, mx.array):
            out = registry.fire(self._lazarus_post, out)
        return out


def _attach(module: nn.Module, registry: HookRegistry, post: str, pre: str | None = None) -> None:
    base = type(module)
    module.__class__ = type(f"Hooked{base.__name__}", (_Fires, base), {})
    # plain attributes (not arrays or modules) stay out of the parameter tree
    module.__dict__.update(_lazarus_hooks=registry, _lazarus_pre=pre, _lazarus_post=post)


class Bridged(HookedModel):
    """The Lazarus parts on top of an mlx-lm ``Model`` (mixed in before it)."""

    family = FAMILY

    def __init__(self, args: ModelArgs):
        super().__init__(args.inner)
        # plain attributes, kept out of mlx's module tree (nn.Module stores modules it is given)
        self.__dict__.update(_hook_registry=HookRegistry(), family_args=args, source=None)
        norm, hooked = self._find_final_norm()
        self.__dict__.update(_lazarus_embedding=self._find_embedding(), _lazarus_norm=norm, _lazarus_norm_hook=hooked)
        registry = self._hook_registry
        _attach(self._lazarus_embedding, registry, "hook_embed")
        for i, block in enumerate(self.blocks):
            _attach(block, registry, f"blocks.{i}.hook_resid_post", f"blocks.{i}.hook_resid_pre")
        if hooked is not None:
            _attach(hooked, registry, "ln_final.hook_normalized")

    def sanitize(self, weights: dict) -> dict:
        """mlx-lm's model's own ``sanitize`` when it has one, else the shared clean-up (rotary
        buffers, a tied head): the model contract's default."""
        own = getattr(super(), "sanitize", None)
        return own(weights) if own is not None else sanitize_weights(weights, self.family_args)

    def hf_weights(self) -> dict:
        """The parameters under their keys (mlx-lm's module tree is its checkpoint layout)."""
        return dict(tree_flatten(self.parameters()))

    def _find_embedding(self) -> nn.Module:
        inner = getattr(self, "model", None)
        for owner in (inner, self):
            found = getattr(owner, "embed_tokens", None) if owner is not None else None
            if found is not None:
                return found
        for _, module in self.named_modules():
            if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
                return module
        raise LazarusError(f"mlx-lm's {self.family_args.module.__name__} model has no token embedding the "
                           "bridge can find")

    def _find_final_norm(self):
        """``(module applied as ln_final, module whose output fires ln_final.hook_normalized)``.

        Found by where it sits rather than by name, so it covers the architectures mlx-lm ships:
        a norm module held beside the list of blocks or by a module above it (``model.norm``,
        gpt_neox's ``final_layer_norm``, phi's ``final_layernorm``, mamba's ``norm_f``, plamo's
        ``model.norm`` above ``model.layers.layers``); a norm inside the head (phixtral: the head
        normalises, so ``ln_final`` is the identity and the hook fires on the head's norm); a
        weightless functional norm (nanochat, talkie: ``ln_final`` calls the module's own function,
        no hook fires). ``(None, None)`` when none is found."""
        for owner in self._layers_owners():
            norm = _norm_child(owner)
            if norm is not None:
                return norm, norm
        head = getattr(self, "lm_head", None)
        if isinstance(head, nn.Module) and not isinstance(head, (nn.Linear, nn.QuantizedLinear)):
            norm = _norm_child(head)
            if norm is not None:
                return _Identity(), norm
        function = getattr(self.family_args.module, "rms_norm", None)
        if callable(function):
            return _FunctionalNorm(function, getattr(self.family_args.inner, "rms_norm_eps", 1e-5)), None
        return None, None

    def _layers_owners(self) -> list:
        """The module whose attribute holds the blocks, then the modules above it up to the model."""
        layers = list(self.layers)
        if not layers:
            return []
        modules = dict(self.named_modules())
        for name, module in modules.items():
            if any(isinstance(v, list) and any(item is layers[0] for item in v) for v in module.values()):
                chain = [module]
                while name:
                    name = name.rpartition(".")[0]
                    chain.append(modules.get(name, self) if name else self)
                return chain[:-1] if len(chain) > 1 else chain  # not the top model (head, embedding)
        return []

    # -- the common parts ----------------------------------------------------------------------
    @property
    def blocks(self) -> list:
        return list(self.layers)

    @property
    def ln_final(self) -> nn.Module:
        if self._lazarus_norm is None:
            raise LazarusError(f"mlx-lm's {self.family_args.module.__name__} model has no final norm the "
                               "bridge can find; probes that need ln_final cannot run on it")
        return self._lazarus_norm

    def hook_names(self) -> list[str]:
        names = ["hook_embed"]
        for i in range(len(self.layers)):
            names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_post"]
        return names + (["ln_final.hook_normalized"] if self._lazarus_norm_hook is not None else [])

    def embed(self, ids: mx.array) -> mx.array:
        return self._lazarus_embedding(ids)

    def unembed(self, h: mx.array) -> mx.array:
        head = self._find_head()
        logits = head(h) if head is not None else self._lazarus_embedding.as_linear(h)
        return self._finish_logits(logits)

    def _finish_logits(self, logits: mx.array) -> mx.array:
        """What mlx-lm's ``Model.__call__`` does to the head's output, where the architecture says so in
        a way the bridge can read: granite's ``logits_scaling``, a final soft-cap (gemma 2's
        ``final_logit_softcapping``, nanochat's module-level ``softcap``)."""
        inner = self.family_args.inner
        scaling = getattr(inner, "logits_scaling", None)
        if isinstance(scaling, (int, float)) and scaling not in (0, 1):
            logits = logits / scaling
        cap = getattr(inner, "final_logit_softcapping", None)
        if isinstance(cap, (int, float)) and cap > 0:
            return cap * mx.tanh(logits / cap)
        softcap = getattr(self.family_args.module, "softcap", None)
        call = getattr(self.family_args.module.Model.__call__, "__code__", None)
        if callable(softcap) and call is not None and "softcap" in call.co_names:
            return softcap(logits)
        return logits

    def _find_head(self):
        """The output projection: ``lm_head``, else a linear layer to the vocabulary outside the blocks
        (gpt_neox's ``model.embed_out``, ``output`` ...); None when the embedding is tied."""
        head = getattr(self, "lm_head", None)
        if head is not None:
            return head
        vocab = getattr(self.family_args.inner, "vocab_size", None) or self.family_args.config.get("vocab_size")
        blocks = {id(m) for block in self.layers for _, m in block.named_modules()}
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.QuantizedLinear)) and id(module) not in blocks \
                    and module.weight.shape[0] == vocab and name.rsplit(".", 1)[-1] in HEAD_NAMES:
                return module
        return None

    def make_cache(self) -> list:
        """mlx-lm's cache for this architecture (its own ``make_cache`` if it has one)."""
        own = getattr(self.family_args.module.Model, "make_cache", None)
        if own is not None:
            return own(self)
        from mlx_lm.models.cache import KVCache

        return [KVCache() for _ in self.layers]

    @property
    def num_parameters(self) -> int:
        from mlx.utils import tree_flatten

        return sum(v.size for _, v in tree_flatten(self.parameters()))

    def __call__(self, ids: mx.array, cache=None, mask=None, **kwargs) -> mx.array:
        if ids.ndim != 2:
            raise LazarusError(f"model input must be token ids of shape (batch, length), got {ids.shape}")
        if mask is not None and not bool(mx.all(mx.array(mask) != 0)):
            raise LazarusError("the mlx-lm bridge cannot run left-padded batches (mlx-lm's models take no "
                               "padding mask); run prompts one at a time or unpadded")
        return super().__call__(ids, cache=cache, **kwargs)


_CLASSES: dict[type, type] = {}


def Model(args: ModelArgs) -> nn.Module:  # noqa: N802 - the family contract names the constructor `Model`
    """mlx-lm's model for ``args`` with the Lazarus parts mixed in."""
    base = args.module.Model
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Bridged{base.__name__}", (Bridged, base), {"__module__": __name__})
    return _CLASSES[base](args)
