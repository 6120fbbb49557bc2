"""The token-level loop under every text entry point: :func:`generate_tokens` (chunked prefill,
then one token per step with the next step queued before the current token is read back) and the
``mx.compile``d decode step over a static cache (``LAZARUS_COMPILED_DECODE``: ``auto``, ``1``, ``0``)."""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import cast

import attrs
import mlx.core as mx

from lazarus.errors import LazarusError
from lazarus.generation.sampling import SamplingConfig, apply_repetition_penalty, make_sampler


# -- the token loop -----------------------------------------------------------------------------------
def _split_row_keys(keys: mx.array) -> tuple[mx.array, mx.array]:
    """Split each row's key (B, 2): ``(the next keys, this step's keys)``."""
    pairs = mx.vmap(mx.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def _cache_arrays(cache) -> list:
    """The arrays held by a model cache, to force prefill chunks to be computed."""
    arrays: list[mx.array] = []
    for layer_cache in cache:
        state = getattr(layer_cache, "state", None)
        if state is None:
            state = [getattr(layer_cache, "keys", None), getattr(layer_cache, "values", None)]
        arrays.extend(a for a in (state if isinstance(state, (list, tuple)) else [state])
                      if isinstance(a, mx.array))
    return arrays


def generate_tokens(model, prompt: mx.array, *, sampling: SamplingConfig | None = None,
                    max_tokens: int = 256, mask: mx.array | None = None, cache: list | None = None,
                    prefill_step_size: int = 2048, compiled: bool = True,
                    row_seeds: Sequence[int] | None = None) -> Generator[mx.array, list[int] | None, None]:
    """Yield sampled token ids, one (B,) int array per step, for a (B, T) int ``prompt``.

    ``mask`` (B, T) marks real tokens with 1 and left padding with 0 (None: no padding). ``cache``
    is a fresh ``model.make_cache()`` by default; pass your own to keep it afterwards. The prompt
    is prefilled in chunks of ``prefill_step_size`` tokens. Each yielded array is already
    evaluated; the next step is queued before it is yielded, so reading it costs no device time.
    The caller stops the loop by breaking out (at most ``max_tokens`` steps). A caller driving the
    generator with ``send(rows)`` (a list of row indices) drops the other rows from then on: later
    arrays have ``len(rows)`` entries, in that order (batched generation frees finished rows so).

    Decoding may use the compiled step (see the module docstring) unless ``compiled`` is False, a
    hook is attached, the model is in training mode, ``cache`` is given, or the model is not a
    Lazarus :class:`~lazarus.models.transformer.CausalLM`; both paths give the same greedy tokens
    in float32 (and the same seeded samples for one row; a seeded batch whose rows finish at
    different steps draws other, equally reproducible, samples).

    ``row_seeds`` (one int per row) gives every row its own key chain instead of ``sampling.seed``:
    a row then draws the same samples in any batch it is part of (up to float rounding of its
    logits), which is what lets data-parallel rollouts equal a single process's.
    """
    sampling = sampling or SamplingConfig()
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise LazarusError(f"prompt must be a non-empty (batch, length) array, got shape {prompt.shape}")
    if max_tokens <= 0:
        return
    prompt = prompt.astype(mx.int32)
    batch, length = prompt.shape
    from lazarus.models.fused import refresh_fused

    refresh_fused(model)  # fused projections follow weights trained or reloaded since
    use_compiled = compiled and cache is None and max_tokens > 1 and _compilable(model, batch)
    cache = model.make_cache() if cache is None else cache
    sample = make_sampler(sampling)
    key = mx.random.key(sampling.seed) if sampling.seed is not None and not sampling.greedy else None
    if row_seeds is not None and not sampling.greedy:
        if len(row_seeds) != batch:
            raise LazarusError(f"row_seeds has {len(row_seeds)} seeds for a batch of {batch} rows")
        key = mx.stack([mx.random.key(int(s)) for s in row_seeds])
    penalty = sampling.repetition_penalty
    window = sampling.repetition_context_size
    history = prompt[:, -window:] if penalty != 1.0 else None

    # prefill everything but the last prompt token; only the cache is evaluated, so the
    # vocabulary projection of these positions is never computed
    done = 0
    while length - done > 1:
        n = min(prefill_step_size, length - done - 1)
        model(prompt[:, done:done + n], cache=cache,
              mask=None if mask is None else mask[:, :done + n])
        mx.eval(_cache_arrays(cache))
        done += n
    running_mask = mask
    ones = None if mask is None else mx.ones((batch, 1), dtype=mask.dtype)

    def step(tokens, step_mask):
        nonlocal key, history
        logits = model(tokens, cache=cache, mask=step_mask)[:, -1, :]
        if history is not None:
            logits = apply_repetition_penalty(logits.astype(mx.float32), history, penalty)
        if key is not None:
            key, sub = _split_row_keys(key) if key.ndim == 2 else mx.random.split(key)
        else:
            sub = None
        next_tokens = sample(logits, sub).astype(mx.int32)
        if history is not None:
            history = mx.concatenate([history, next_tokens[:, None]], axis=1)[:, -window:]
        return next_tokens

    tokens = step(prompt[:, done:], running_mask)
    mx.async_eval(tokens)
    if use_compiled:
        yield from _compiled_decode(model, sampling, tokens, cache, key, history, max_tokens)
        return
    for n in range(max_tokens):
        if n + 1 < max_tokens:
            if running_mask is not None and ones is not None:  # (both come from mask)
                running_mask = mx.concatenate([running_mask, ones], axis=1)
            next_tokens = step(tokens[:, None], running_mask)
            mx.async_eval(next_tokens)
        mx.eval(tokens)
        keep = yield tokens
        if n % 256 == 255:
            mx.clear_cache()
        if n + 1 < max_tokens:
            tokens = next_tokens
            if keep is not None and len(keep) < batch:
                rows = mx.array(keep, dtype=mx.int32)
                _select_rows(cache, rows, batch)
                tokens = tokens[rows]
                if running_mask is not None and ones is not None:
                    running_mask, ones = running_mask[rows], ones[: len(keep)]
                if history is not None:
                    history = history[rows]
                if key is not None and key.ndim == 2:
                    key = key[rows]
                batch = len(keep)


#: LAZARUS_COMPILED_DECODE: "auto" (default) compiles decoding on the CPU, and on a GPU for
#: batches of 8 rows or more; "1" always, "0" never. At batch 1 on MLX 0.32's CUDA backend decoding
#: is bound by its matrix-vector kernels, not by host work, and the compiled step measured no
#: faster there; batched rollouts gain from it (docs/performance.md).
_COMPILED_DECODE = os.environ.get("LAZARUS_COMPILED_DECODE", "auto")


def _compilable(model, batch: int) -> bool:
    from lazarus.models.transformer import CausalLM

    if _COMPILED_DECODE == "0" or (_COMPILED_DECODE == "auto" and mx.default_device() != mx.cpu and batch < 8):
        return False
    hooks = getattr(model, "_hook_registry", None)
    return isinstance(model, CausalLM) and not model.training and hooks is not None and not hooks.fns


def _capacity(needed: int) -> int:
    """Static cache length: rounded up so that calls of similar lengths reuse one traced step."""
    return -(-needed // 128) * 128


def _bucket(rows: int) -> int:
    """Physical batch for ``rows`` live rows: a power of two, so shrinking retraces log2(B) times."""
    return 1 << max(rows - 1, 0).bit_length()


def _decode_step(model, sampling: SamplingConfig, padded: bool, seeded: bool, per_row: bool = False):
    """The compiled one-token step for ``model`` and this sampling setting, made once per model.

    ``step(tokens (B,), offset, keys, values, extras) -> (next tokens, offset + 1, keys, values,
    extras)``; ``extras`` holds the padding key mask, the random key and the repetition history
    when they apply. Model weights are read at each call (``inputs=``), so a trained adapter is seen.
    """
    from lazarus.models.fused import refresh_fused

    steps = model.__dict__.setdefault("_lazarus_decode_steps", {})
    name = (attrs.evolve(sampling, seed=None), padded, seeded, per_row, refresh_fused(model))
    if name in steps:
        return steps[name]
    sample = make_sampler(sampling)
    penalty, window = sampling.repetition_penalty, sampling.repetition_context_size
    from lazarus.models.cache import StaticKVCache

    def step(tokens, offset, keys, values, extras):
        extras = dict(extras)
        caches = [StaticKVCache(k, v, offset, extras.get("key_mask")) for k, v in zip(keys, values, strict=True)]
        logits = model(tokens[:, None], cache=caches)[:, -1, :]
        if penalty != 1.0:
            logits = apply_repetition_penalty(logits.astype(mx.float32), extras["history"], penalty)
        sub = None
        if per_row:
            extras["row_keys"], sub = _split_row_keys(extras["row_keys"])
        elif seeded:
            extras["key"], sub = mx.random.split(extras["key"])
        next_tokens = sample(logits, sub).astype(mx.int32)
        if penalty != 1.0:
            extras["history"] = mx.concatenate([extras["history"], next_tokens[:, None]], axis=1)[:, -window:]
        return next_tokens, offset + 1, [c.keys for c in caches], [c.values for c in caches], extras

    # the global generator is state too when sampling draws from it
    state = [model.state] + ([] if seeded or per_row or sampling.greedy else [mx.random.state])
    steps[name] = mx.compile(step, inputs=state, outputs=state[1:])
    return steps[name]


def _compiled_decode(model, sampling, tokens, cache, key, history, max_tokens):
    """The decode loop of :func:`generate_tokens` over a static cache and the compiled step."""
    from lazarus.models.cache import StaticKVCache

    length = cache[0].offset
    batch = tokens.shape[0]
    static = [StaticKVCache.from_cache(c, _capacity(length + max_tokens - 1)) for c in cache]
    offset = static[0].offset
    keys, values = [c.keys for c in static], [c.values for c in static]
    extras = {}
    if static[0].key_mask is not None:
        extras["key_mask"] = static[0].key_mask
    if key is not None:
        extras["row_keys" if key.ndim == 2 else "key"] = key
    if history is not None:
        extras["history"] = history
    step = _decode_step(model, sampling, "key_mask" in extras, "key" in extras, "row_keys" in extras)
    del static, cache[:]  # the prefill cache is copied; let the buffers be donated and freed
    live = None  # physical row of each caller row when finished rows still fill the batch
    from lazarus.models.fused import trusted_groups

    for n in range(max_tokens):
        if n + 1 < max_tokens:
            with trusted_groups():  # refresh_fused() checked them; a trace sees traced weights
                next_tokens, offset, keys, values, extras = step(tokens, offset, keys, values, extras)
            mx.async_eval(next_tokens, keys, values)
        out = tokens if live is None else tokens[live]
        mx.eval(out)
        keep = yield out
        if n % 256 == 255:
            mx.clear_cache()
        if n + 1 >= max_tokens:
            return
        tokens = next_tokens
        if keep is not None and len(keep) < (batch if live is None else live.size):
            rows = list(range(batch)) if live is None else cast("list[int]", live.tolist())
            rows = [rows[i] for i in keep]
            if _bucket(len(rows)) < batch:  # shrink: keep the live rows, fill up to a power of two
                rows += [rows[0]] * (_bucket(len(rows)) - len(rows))
                index = mx.array(rows, dtype=mx.int32)
                tokens, keys, values = tokens[index], [k[index] for k in keys], [v[index] for v in values]
                extras = {name: (a if name == "key" else a[index]) for name, a in extras.items()}
                batch = len(rows)
                rows = rows[:len(keep)]
                live = None if len(rows) == batch else mx.array(list(range(len(rows))), dtype=mx.int32)
            else:
                live = mx.array(rows, dtype=mx.int32)


def _select_rows(cache, rows: mx.array, batch: int) -> None:
    """Keep only ``rows`` of every per-sequence array a cache holds (its leading axis is the batch)."""
    for layer_cache in cache:
        for name, value in list(vars(layer_cache).items()):
            if isinstance(value, mx.array) and value.ndim and value.shape[0] == batch:
                setattr(layer_cache, name, value[rows])
