"""Hook points with TransformerLens names, and the API to read or change activations through them.

Hook points of every family (``L`` is the block index, B batch, T new tokens, S keys, D hidden):

====================================  ==============  ============================================
name                                  shape           what
====================================  ==============  ============================================
``hook_embed``                        (B, T, D)       token embeddings, after any family scale
``blocks.{L}.hook_resid_pre``         (B, T, D)       the residual stream entering block L
``blocks.{L}.attn.hook_pattern``      (B, H, T, S)    attention probabilities after softmax
``blocks.{L}.attn.hook_z``            (B, T, H, Dh)   each head's output before ``o_proj``
``blocks.{L}.hook_attn_out``          (B, T, D)       what attention adds to the residual stream
``blocks.{L}.hook_resid_mid``         (B, T, D)       the residual stream between attention and MLP
``blocks.{L}.mlp.hook_post``          (B, T, I)       the MLP hidden activation before ``down_proj``
``blocks.{L}.hook_mlp_out``           (B, T, D)       what the MLP adds to the residual stream
``blocks.{L}.hook_resid_post``        (B, T, D)       the residual stream leaving block L
``ln_final.hook_normalized``          (B, T, D)       the output of the final norm
====================================  ==============  ============================================

``hook_attn_out`` / ``hook_mlp_out`` are exactly what is added to the residual, i.e. after
Gemma-2's post-norms and Granite's residual multiplier, so ``resid_post = resid_pre + attn_out +
mlp_out`` holds for every family.

A hook function is called as ``fn(activation, name)`` and returns a replacement array of the same
shape, or None to keep the activation. Hooks run inside the forward pass, so they work under
``mx.grad`` and during generation. Computing ``hook_pattern`` needs explicit attention (the fused
kernel never forms the probabilities), so attention switches to it only for layers whose pattern
hook is active. With no hook set, a forward pass pays one dict-emptiness check per hook site.

Use it through the model (every family inherits :class:`HookedModel`)::

    logits, acts = model.run_with_cache(ids, names=["blocks.0.hook_resid_post"])
    logits = model.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, name: 0 * x)])
    with model.hooks([("hook_embed", steer)]):   # attached for everything inside, e.g. generation
        ...
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lazarus.errors import LazarusError

HookFn = Callable[..., object]
#: a hook name, a glob over names ("blocks.*.hook_resid_post"), or a predicate ``name -> bool``
NameFilter = str | Callable[[str], bool]

BLOCK_HOOKS = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
HOOK_NAMES_HELP = ("hook_embed, blocks.{L}.hook_resid_pre, blocks.{L}.attn.hook_pattern, "
                   "blocks.{L}.attn.hook_z, blocks.{L}.hook_attn_out, blocks.{L}.hook_resid_mid, "
                   "blocks.{L}.mlp.hook_post, blocks.{L}.hook_mlp_out, "
                   "blocks.{L}.hook_resid_post, ln_final.hook_normalized")


def hook_names(num_layers: int) -> list[str]:
    """Every hook name of a model with ``num_layers`` blocks, in the order they fire."""
    names = ["hook_embed"]
    for layer in range(num_layers):
        names += [f"blocks.{layer}.{hook}" for hook in BLOCK_HOOKS]
    return names + ["ln_final.hook_normalized"]


class HookRegistry:
    """The hook functions attached to one model: ``fns`` maps a hook name to its functions.

    Model code fires a hook point as ``if registry.fns: x = registry.fire(name, x)``; a name has an
    entry in ``fns`` only while at least one function is attached to it.
    """

    __slots__ = ("fns",)

    def __init__(self) -> None:
        self.fns: dict[str, list[HookFn]] = {}

    def fire(self, name: str, x):
        for fn in self.fns.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if getattr(out, "shape", None) != x.shape:
                    raise LazarusError(
                        f"hook on {name} returned shape {getattr(out, 'shape', type(out).__name__)}, "
                        f"expected {x.shape}; return an array of the same shape, or None to keep it"
                    )
                x = out
        return x

    def add(self, name: str, fn: HookFn) -> None:
        self.fns.setdefault(name, []).append(fn)

    def remove(self, name: str, fn: HookFn) -> None:
        fns = self.fns.get(name, [])
        if fn in fns:
            fns.remove(fn)
        if not fns:
            self.fns.pop(name, None)

    def clear(self) -> None:
        self.fns.clear()


class HookedModel:
    """Mixin giving a model the hook API. The model sets ``self._hook_registry`` and has ``blocks``."""

    _hook_registry: HookRegistry

    if TYPE_CHECKING:  # supplied by the model

        @property
        def blocks(self) -> Sequence[Any]: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def hook_names(self) -> list[str]:
        """All hook names of this model, in the order they fire."""
        return hook_names(len(self.blocks))

    def resolve_hook_names(self, names: NameFilter | Iterable[NameFilter] | None) -> list[str]:
        """Hook names matching ``names``: None (all), a name, a glob, a predicate, or a list of those.

        Raises :class:`LazarusError` for a name or glob that matches no hook point.
        """
        valid = self.hook_names()
        if names is None:
            return valid
        if isinstance(names, str) or callable(names):
            names = [names]
        chosen: dict[str, None] = {}
        for item in names:
            if callable(item):
                matched = [n for n in valid if item(n)]
            elif any(ch in item for ch in "*?["):
                matched = fnmatch.filter(valid, item)
            else:
                matched = [item] if item in valid else []
            if not matched and not callable(item):
                raise LazarusError(
                    f"no hook point named {item!r} in this {len(self.blocks)}-layer model; "
                    f"hook names are {HOOK_NAMES_HELP}"
                )
            chosen.update(dict.fromkeys(matched))
        return [n for n in valid if n in chosen]

    def add_hook(self, name: NameFilter, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn`` to every hook point ``name`` matches; returns a function that detaches it."""
        names = self.resolve_hook_names(name)
        for n in names:
            self._hook_registry.add(n, fn)

        def remove() -> None:
            for n in names:
                self._hook_registry.remove(n, fn)

        return remove

    def reset_hooks(self) -> None:
        """Detach every hook function."""
        self._hook_registry.clear()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()) -> Iterator:
        """Attach ``[(name, fn), ...]`` for the duration of a ``with`` block (e.g. around generation)."""
        removers = []
        try:
            for name, fn in fwd_hooks:
                removers.append(self.add_hook(name, fn))
            yield self
        finally:
            for remove in reversed(removers):
                remove()

    def run_with_hooks(self, ids, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """Logits of ``self(ids, **kwargs)`` with ``fwd_hooks`` attached for this one call."""
        with self.hooks(fwd_hooks):
            return self(ids, **kwargs)

    def run_with_cache(self, ids, names: NameFilter | Iterable[NameFilter] | None = None, **kwargs):
        """``(logits, {hook name: activation})`` capturing exactly the hook points ``names`` selects.

        ``names``: None (every hook point), a name, a glob, a predicate ``name -> bool``, or a
        list of those. Other keyword arguments (``cache``, ``mask``) go to the forward pass.
        """
        captured: dict[str, object] = {}

        def capture(x, name):
            captured[name] = x

        with self.hooks([(n, capture) for n in self.resolve_hook_names(names)]):
            logits = self(ids, **kwargs)
        return logits, captured
