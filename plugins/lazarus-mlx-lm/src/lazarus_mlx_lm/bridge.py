"""mlx-lm's model classes as a Lazarus family.

``ModelArgs.from_hf_config(config)`` finds ``mlx_lm.models.<model_type>`` (after mlx-lm's own
remapping, e.g. mistral -> llama) and builds its ``ModelArgs``; ``Model(args)`` builds mlx-lm's
``Model`` as a subclass that adds the Lazarus parts: ``blocks`` (mlx-lm's layers), ``embed``,
``ln_final``, ``unembed``, ``make_cache`` and these hook points:

- ``hook_embed`` (the token embedding's output, before any model-specific scale),
- ``blocks.{L}.hook_resid_pre`` / ``blocks.{L}.hook_resid_post`` (each layer's input and output),
- ``ln_final.hook_normalized`` (the final norm's output).

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

from lazarus.errors import LazarusError
from lazarus.models.hooks import HookedModel, HookRegistry

FAMILY = "mlx-lm"


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
    return bool(name) and name.replace("_", "").isalnum() and (
        importlib.util.find_spec(f"mlx_lm.models.{name}") is not None)


def architecture(model_type: str) -> ModuleType:
    """mlx-lm's module for ``model_type`` (its remapping applied), or a LazarusError."""
    name = _module_name(model_type)
    if not name or not name.replace("_", "").isalnum():
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

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.inner, "tie_word_embeddings", self.config.get("tie_word_embeddings", False)))


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
        self.__dict__.update(_lazarus_embedding=self._find_embedding(), _lazarus_norm=self._find_final_norm())
        registry = self._hook_registry
        _attach(self._lazarus_embedding, registry, "hook_embed")
        for i, block in enumerate(self.blocks):
            _attach(block, registry, f"blocks.{i}.hook_resid_post", f"blocks.{i}.hook_resid_pre")
        if self._lazarus_norm is not None:
            _attach(self._lazarus_norm, registry, "ln_final.hook_normalized")

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
        inner = getattr(self, "model", None)
        for name in ("norm", "final_layernorm", "ln_f", "norm_f"):
            found = getattr(inner, name, None) if inner is not None else None
            if isinstance(found, nn.Module):
                return found
        return None

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
        return names + (["ln_final.hook_normalized"] if self._lazarus_norm is not None else [])

    def embed(self, ids: mx.array) -> mx.array:
        return self._lazarus_embedding(ids)

    def unembed(self, h: mx.array) -> mx.array:
        head = getattr(self, "lm_head", None)
        if head is not None:
            return head(h)
        return self._lazarus_embedding.as_linear(h)

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
