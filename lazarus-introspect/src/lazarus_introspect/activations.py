"""A thin layer over the model's hook points for probes: capture, replace and read activations.

Every family exposes the same parts (``model.embed``, ``model.blocks``, ``model.ln_final``,
``model.unembed``) and the same TransformerLens hook names, so nothing here knows a family and
everything works the same with an adapter loaded. What goes in is a loaded model and token ids
``(B, T)``; what comes out are ``mx.array`` activations.

Hook names (see :func:`hook_name`)::

    hook_embed                     (B, T, D)  embeddings, after any family scale
    blocks.{L}.hook_resid_pre      (B, T, D)  residual stream entering block L
    blocks.{L}.hook_attn_out       (B, T, D)  attention output added to the residual
    blocks.{L}.hook_mlp_out        (B, T, D)  MLP output added to the residual
    blocks.{L}.hook_resid_post     (B, T, D)  residual stream leaving block L
    blocks.{L}.attn.hook_pattern   (B, H, T, S) attention probabilities
    blocks.{L}.attn.hook_z         (B, T, H, Dh) per-head attention output before o_proj
    blocks.{L}.mlp.hook_post       (B, T, I)  MLP hidden activation before down_proj
    ln_final.hook_normalized       (B, T, D)  final norm output

A hook function receives ``(activation, name)`` and returns a replacement or ``None`` (keep).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

from lazarus.errors import LazarusError

#: component names the CLI accepts -> hook name template
COMPONENT_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "attn": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "z": "blocks.{layer}.attn.hook_z",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}

HookFn = Callable[..., object]


def hook_name(component: str, layer: int) -> str:
    """The hook name of ``component`` (``resid_pre``, ``attn_out``, ``z``, ...) at ``layer``."""
    try:
        return COMPONENT_HOOKS[component].format(layer=layer)
    except KeyError:
        raise LazarusError(
            f"unknown component {component!r}; use one of {', '.join(sorted(COMPONENT_HOOKS))}") from None


def num_layers(model) -> int:
    """How many transformer blocks the model has."""
    return len(model.blocks)


def check_layers(model, layers: Iterable[int], option: str = "--layer") -> list[int]:
    """``layers`` with negative indices resolved; a LazarusError names the bad one and the range."""
    count = num_layers(model)
    resolved = []
    for layer in layers:
        index = layer + count if layer < 0 else layer
        if not 0 <= index < count:
            raise LazarusError(f"{option} {layer} is out of range: the model has {count} layers (0..{count - 1})")
        resolved.append(index)
    return resolved


def run_with_cache(model, ids, names: Iterable[str]):
    """Run ``model`` on ``ids`` (B, T) and return ``(logits, {name: activation})`` for ``names``."""
    names = list(names)
    logits, cache = model.run_with_cache(ids, names=names)
    missing = [n for n in names if n not in cache]
    if missing:
        raise LazarusError(f"the {getattr(model, 'family', 'loaded')} model did not fire hook(s) "
                           f"{', '.join(missing)}; this model does not expose that hook point")
    return logits, {n: cache[n] for n in names}


def run_with_hooks(model, ids, hooks: Sequence[tuple[str, HookFn]]):
    """Run ``model`` on ``ids`` with ``hooks`` = [(name, fn)] attached; returns the logits."""
    return model.run_with_hooks(ids, fwd_hooks=list(hooks))


@contextmanager
def attached(model, hooks: Sequence[tuple[str, HookFn]]):
    """Keep ``hooks`` attached for every forward pass inside the block (e.g. during generation)."""
    with model.hooks(fwd_hooks=list(hooks)):
        yield model


def lens(model, hidden):
    """Read a residual-stream vector ``hidden`` (..., D) as logits: ``unembed(ln_final(hidden))``.

    The final norm is applied to ``hidden`` itself, so every layer gets its own normalisation
    (rather than the final layer's cached scale); the head includes any family soft-capping.
    """
    return model.unembed(model.ln_final(hidden))


def residual_stream(model, ids, *, include_embed: bool = False) -> list:
    """The residual stream after every block: a list of ``num_layers`` arrays (B, T, D).

    With ``include_embed`` the embeddings come first (``num_layers + 1`` entries).
    """
    count = num_layers(model)
    names = [hook_name("resid_post", layer) for layer in range(count)]
    if include_embed:
        names = ["hook_embed", *names]
    _, cache = run_with_cache(model, ids, names)
    return [cache[n] for n in names]


def to_numpy(array):
    """An ``mx.array`` (any float dtype, including bfloat16) as a float32 numpy array."""
    import mlx.core as mx
    import numpy as np

    if isinstance(array, np.ndarray):
        return array.astype(np.float32)
    if array.dtype in (mx.bfloat16, mx.float16):
        array = array.astype(mx.float32)
    return np.array(array)


def replace_positions(values, positions: Sequence[int] | None = None):
    """A hook function that writes ``values`` into the activation, at ``positions`` (axis 1) or all."""
    import mlx.core as mx

    def hook(activation, name=None):
        if positions is None:
            return mx.broadcast_to(values, activation.shape).astype(activation.dtype)
        out = activation
        for pos in positions:
            out = _set_position(out, pos, values[:, pos] if values.ndim == activation.ndim else values)
        return out

    return hook


def _set_position(activation, position: int, value):
    """``activation`` with index ``position`` of axis 1 replaced by ``value`` (functional update)."""
    import mlx.core as mx

    length = activation.shape[1]
    mask = (mx.arange(length) == position).reshape((1, length) + (1,) * (activation.ndim - 2))
    return mx.where(mask, mx.expand_dims(value, 1).astype(activation.dtype), activation)


def prompt_representations(model, tokenizer, texts: Sequence[str], *, pool: str = "last",
                           include_embed: bool = False):
    """One vector per prompt and layer: a float32 numpy array (layers, N, D).

    ``pool`` is ``"last"`` (the last token's residual) or ``"mean"`` (mean over the prompt's
    tokens). Layers are the residual stream after each block, preceded by the embeddings when
    ``include_embed``. Prompts run one at a time, so no padding touches the numbers.
    """
    import mlx.core as mx
    import numpy as np

    if pool not in {"last", "mean"}:
        raise LazarusError(f"--pool {pool!r}: use 'last' or 'mean'")
    per_prompt = []
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            raise LazarusError(f"the prompt {text!r} encodes to no tokens")
        stream = residual_stream(model, mx.array([ids], dtype=mx.int32), include_embed=include_embed)
        pooled = [h[0, -1] if pool == "last" else h[0].astype(mx.float32).mean(axis=0) for h in stream]
        per_prompt.append(to_numpy(mx.stack(pooled)))
    return np.stack(per_prompt, axis=1)


def hidden_size(model) -> int:
    """Width D of the residual stream."""
    width = getattr(getattr(model, "args", None), "hidden_size", None)
    return int(width) if width else int(model.ln_final.weight.shape[-1])
