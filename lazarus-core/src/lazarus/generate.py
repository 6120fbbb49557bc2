"""Text generation: sampling, KV-cache decoding, streaming, batched generation.

Works with any model that follows the model contract (docs/internals.md): ``model(ids, cache=cache,
mask=mask) -> logits`` and ``model.make_cache()``. Three entry points:

- :func:`stream_generate` yields :class:`GenerationChunk` pieces of text as they are decoded;
- :func:`generate` returns one :class:`GenerationResult`;
- :func:`batch_generate` runs several prompts together (left-padded, masked) and returns one result
  per prompt, each stopping on its own.

:func:`generate_tokens` is the token-level loop under all three: chunked prefill, then one token
per step with the next step queued (``mx.async_eval``) before the current token is read back, so the
device never waits for Python. On the CPU (and for batches on a GPU), with no hook attached,
decoding runs one ``mx.compile``d step per token (forward pass, repetition penalty and sampling
together) over a preallocated :class:`~lazarus.models.cache.StaticKVCache` whose position is an array input, so the
same traced step serves every token and the host does no per-layer work
(``LAZARUS_COMPILED_DECODE``: ``auto``, ``1``, ``0``).
"""

from __future__ import annotations

import math
import os
import sys
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import mlx.core as mx

from lazarus.errors import LazarusError

__all__ = [
    "GenerationChunk",
    "GenerationResult",
    "GenerationStats",
    "SamplingConfig",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "batch_generate",
    "generate",
    "generate_tokens",
    "make_sampler",
    "stream_generate",
]

_NEG_INF = float("-inf")


# -- configuration -----------------------------------------------------------------------------------
def _non_negative(instance, attribute, value):
    if value < 0:
        raise LazarusError(f"{attribute.name} must be >= 0, got {value}")


def _probability(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise LazarusError(f"{attribute.name} must be between 0 and 1, got {value}")


def _positive(instance, attribute, value):
    if value <= 0:
        raise LazarusError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class SamplingConfig:
    """How the next token is picked from the logits.

    ``temperature`` 0 means greedy (argmax; the filters below are then irrelevant). Otherwise the
    logits are divided by the temperature, then filtered in this order: ``top_k`` (keep the k most
    likely; 0 = off), ``top_p`` (keep the smallest set whose probability reaches p; 1 = off),
    ``min_p`` (keep tokens at least ``min_p`` times as likely as the best; 0 = off), then sampled.
    ``repetition_penalty`` (> 1 discourages, 1 = off) divides positive / multiplies negative logits
    of the tokens among the last ``repetition_context_size`` tokens (prompt included), before
    anything else. ``seed`` makes sampling reproducible (an ``mx.random.key`` chain); None uses
    mlx's global generator.
    """

    temperature: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    top_k: int = attrs.field(default=0, converter=int, validator=_non_negative)
    top_p: float = attrs.field(default=1.0, converter=float, validator=_probability)
    min_p: float = attrs.field(default=0.0, converter=float, validator=_probability)
    min_tokens_to_keep: int = attrs.field(default=1, converter=int, validator=_positive)
    repetition_penalty: float = attrs.field(default=1.0, converter=float, validator=_positive)
    repetition_context_size: int = attrs.field(default=20, converter=int, validator=_positive)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@attrs.frozen
class GenerationStats:
    """Timing and memory of one generation (or one batch).

    ``prompt_tps``: prompt tokens per second, measured to the first sampled token.
    ``generation_tps``: generated tokens per second after the first one (decode speed; for a batch,
    tokens of all rows). ``peak_memory_gb``: mlx's peak allocation since generation started.
    """

    prompt_tokens: int
    prompt_seconds: float
    prompt_tps: float
    generation_tokens: int
    generation_seconds: float
    generation_tps: float
    peak_memory_gb: float


@attrs.frozen
class GenerationChunk:
    """One step of :func:`stream_generate`: the new ``text`` (may be "" while a character or a
    possible stop string is incomplete), the ``token`` id it came from, ``finish_reason`` (None
    until the last chunk, then "stop" or "length") and ``stats``. Every generated token appears in
    exactly one chunk; the last chunk's token is the one that ended generation (an EOS/stop token,
    whose text is not emitted, the token that completed a stop string, or the max_tokens-th)."""

    text: str
    token: int | None
    finish_reason: str | None
    stats: GenerationStats


@attrs.frozen
class GenerationResult:
    """A finished generation: ``text`` (stop strings and EOS not included), ``token_ids`` (every
    generated id, including the EOS/stop token that ended it), ``prompt_token_ids``,
    ``finish_reason`` ("stop" or "length") and ``stats``."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str
    stats: GenerationStats


# -- logits filters (pure functions of (B, V) arrays) ------------------------------------------------
def apply_repetition_penalty(logits: mx.array, history: mx.array, penalty: float) -> mx.array:
    """Penalise the tokens in ``history`` (B, W): positive logits divided, negative multiplied."""
    seen = mx.take_along_axis(logits, history, axis=-1)
    seen = mx.where(seen > 0, seen / penalty, seen * penalty)
    return mx.put_along_axis(logits, history, seen, axis=-1)


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    """Keep the ``k`` largest logits of each row, set the rest to -inf (k <= 0 or >= V: unchanged)."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    dropped = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., k:]
    return mx.put_along_axis(logits, dropped, mx.array(_NEG_INF, logits.dtype), axis=-1)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    """Nucleus filter: keep the most likely tokens until their probability reaches ``p``.

    The token that crosses ``p`` is kept, so the most likely token always survives.
    """
    if p >= 1.0:
        return logits
    order = mx.argsort(-logits, axis=-1)
    ranked = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(ranked, axis=-1)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    ranked = mx.where(mass_before < p, ranked, mx.array(_NEG_INF, logits.dtype))
    return mx.put_along_axis(logits, order, ranked, axis=-1)


def apply_min_p(logits: mx.array, min_p: float, min_tokens_to_keep: int = 1) -> mx.array:
    """Keep tokens whose probability is at least ``min_p`` × the best token's (and at least the
    ``min_tokens_to_keep`` most likely)."""
    if min_p <= 0.0:
        return logits
    # compare in log space: log p_i >= log p_max + log(min_p)
    threshold = mx.max(logits, axis=-1, keepdims=True) + math.log(min_p)
    keep = logits >= threshold
    if min_tokens_to_keep > 1:
        kth_best = mx.sort(logits, axis=-1)[..., -min_tokens_to_keep:][..., :1]
        keep = keep | (logits >= kth_best)
    return mx.where(keep, logits, mx.array(_NEG_INF, logits.dtype))


def make_sampler(config: SamplingConfig):
    """A function ``(logits (B, V), key or None) -> token ids (B,)`` for ``config``.

    Repetition penalty is not part of it (it needs the token history; :func:`generate_tokens`
    applies it first).
    """
    if config.greedy:
        return lambda logits, key=None: mx.argmax(logits, axis=-1)

    temperature, top_k, top_p = config.temperature, config.top_k, config.top_p
    min_p, min_keep = config.min_p, config.min_tokens_to_keep

    def filtered(logits):
        logits = logits.astype(mx.float32) / temperature
        logits = apply_top_k(logits, top_k)
        logits = apply_top_p(logits, top_p)
        return apply_min_p(logits, min_p, min_keep)

    compiled = mx.compile(lambda logits, key: mx.random.categorical(filtered(logits), key=key))
    # one key per row (B, 2): a row's samples depend on its own key alone, not on the batch
    per_row = mx.compile(lambda logits, keys: mx.vmap(lambda row, k: mx.random.categorical(row, key=k))(
        filtered(logits), keys))

    def sample(logits, key=None):
        if key is None:  # mlx's global generator; not capturable by compile, so run eagerly
            return mx.random.categorical(filtered(logits))
        return per_row(logits, key) if key.ndim == 2 else compiled(logits, key)

    return sample


# -- the token loop -----------------------------------------------------------------------------------
def _split_row_keys(keys: mx.array) -> tuple[mx.array, mx.array]:
    """Split each row's key (B, 2): ``(the next keys, this step's keys)``."""
    pairs = mx.vmap(mx.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def _cache_arrays(cache) -> list:
    """The arrays held by a model cache, to force prefill chunks to be computed."""
    arrays = []
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
                    row_seeds: Sequence[int] | None = None) -> Iterator[mx.array]:
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
            if running_mask is not None:
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
                if running_mask is not None:
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
            rows = list(range(batch)) if live is None else live.tolist()
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


# -- text level -------------------------------------------------------------------------------------------
class _StopStrings:
    """Holds back text that might be the start of a stop string; cuts text at the first stop."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return text[:min(found)], True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def _peak_memory_gb() -> float:
    get = getattr(mx, "get_peak_memory", None) or getattr(getattr(mx, "metal", None), "get_peak_memory", None)
    return get() / 1e9 if get else 0.0


def _reset_peak_memory() -> None:
    reset = getattr(mx, "reset_peak_memory", None) or getattr(getattr(mx, "metal", None), "reset_peak_memory", None)
    if reset:
        reset()


def _prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        raise LazarusError("the prompt is empty after tokenisation; give some text")
    return ids


def _sampling_from(sampling: SamplingConfig | None, overrides: dict[str, Any]) -> SamplingConfig:
    sampling = sampling or SamplingConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in attrs.fields(SamplingConfig)}
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        sampling = attrs.evolve(sampling, **overrides)
    return sampling


class _Timer:
    """Prompt and decode timing for one generation or batch."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.start = time.perf_counter()
        self.first = None  # when the first sampled token was read back
        self.generated = 0
        self.decode_generated = 0  # tokens that came out of decode steps (not prefill)

    def first_tokens(self, count: int) -> None:
        self.first = time.perf_counter()
        self.generated += count

    def more_tokens(self, count: int) -> None:
        self.generated += count
        self.decode_generated += count

    def stats(self) -> GenerationStats:
        now = time.perf_counter()
        prompt_seconds = (self.first or now) - self.start
        decode_seconds = now - self.first if self.first is not None else 0.0
        return GenerationStats(
            prompt_tokens=self.prompt_tokens, prompt_seconds=prompt_seconds,
            prompt_tps=self.prompt_tokens / prompt_seconds if prompt_seconds > 0 else 0.0,
            generation_tokens=self.generated, generation_seconds=decode_seconds,
            generation_tps=self.decode_generated / decode_seconds if decode_seconds > 0 else 0.0,
            peak_memory_gb=_peak_memory_gb())


class _TextStream:
    """Per-sequence text state: detokeniser, stop strings and stop ids."""

    def __init__(self, tokenizer, stop: Sequence[str], stop_ids: set[int], max_tokens: int):
        self.detok = tokenizer.detokenizer()
        self.stops = _StopStrings(stop)
        self.stop_ids = stop_ids
        self.max_tokens = max_tokens
        self.count = 0
        self.token_ids: list[int] = []
        self.pieces: list[str] = []
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        """Take one generated token; returns the text to emit and sets ``finish_reason`` at the end."""
        self.count += 1
        self.token_ids.append(token)
        if token in self.stop_ids:
            text, stopped = self.stops.push(self.detok.finish())
            text += "" if stopped else self.stops.flush()
            self.finish_reason = "stop"
        else:
            text, stopped = self.stops.push(self.detok.add(token))
            if stopped:
                self.finish_reason = "stop"
            elif self.count >= self.max_tokens:
                tail, stopped = self.stops.push(self.detok.finish())
                text += tail + ("" if stopped else self.stops.flush())
                self.finish_reason = "stop" if stopped else "length"
        self.pieces.append(text)
        return text


class ContextLengthWarning(UserWarning):
    """A prompt (or prompt plus ``max_tokens``) runs past the model's ``max_position_embeddings``."""


def context_warning(model, prompt_tokens: int, max_tokens: int = 0, option: str = "max_tokens") -> str | None:
    """One line when ``prompt_tokens`` (plus up to ``max_tokens`` generated) go past the model's
    ``max_position_embeddings``, else None. Positions past it were never trained; RoPE-scaling users
    may mean it, so it is a warning, not an error."""
    args = getattr(model, "args", None)
    limit = getattr(args, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    scaled = " (RoPE scaling is set; fine if it extends the context)" if getattr(args, "rope_scaling", None) else ""
    if prompt_tokens > limit:
        return (f"the prompt is {prompt_tokens} tokens, longer than the model's context of {limit} "
                f"(max_position_embeddings); expect degraded output{scaled}")
    if prompt_tokens + max_tokens > limit:
        return (f"{option} {max_tokens} after a {prompt_tokens}-token prompt can run past the model's "
                f"context of {limit} tokens (max_position_embeddings); text after that may degrade{scaled}")
    return None


def _warn_past_context(model, prompt_tokens: int, max_tokens: int) -> None:
    message = context_warning(model, prompt_tokens, max_tokens)
    if message:  # the default warnings filter shows each distinct message once
        import warnings

        warnings.warn(message, ContextLengthWarning, stacklevel=3)


def _stop_ids(tokenizer, stop_token_ids: Sequence[int] | None) -> set[int]:
    return set(tokenizer.eos_token_ids) | {int(i) for i in (stop_token_ids or ())}


def stream_generate(model, tokenizer, prompt: str | Sequence[int], *, max_tokens: int = 256,
                    sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
                    stop_token_ids: Sequence[int] | None = None, prefill_step_size: int = 2048,
                    **sampling_options: Any) -> Iterator[GenerationChunk]:
    """Generate from one prompt, yielding a :class:`GenerationChunk` per generated token.

    ``prompt`` is text (encoded with the tokenizer's special tokens, e.g. BOS) or a list of token
    ids used as they are (pass ``tokenizer.encode_chat(messages)`` for a chat prompt, or
    ``tokenizer.encode(text, add_special_tokens=False)`` for a raw one). Generation stops after
    ``max_tokens`` tokens, at one of the tokenizer's EOS ids or ``stop_token_ids``, or when the text
    contains one of the ``stop`` strings; the EOS token's text and the stop string are not emitted.
    ``sampling_options`` override fields of ``sampling`` (e.g. ``temperature=0.7, seed=0``).
    """
    sampling = _sampling_from(sampling, sampling_options)
    prompt_ids = _prompt_ids(tokenizer, prompt)
    if max_tokens <= 0:
        return
    _warn_past_context(model, len(prompt_ids), max_tokens)
    text_stream = _TextStream(tokenizer, stop, _stop_ids(tokenizer, stop_token_ids), max_tokens)
    _reset_peak_memory()
    timer = _Timer(len(prompt_ids))
    prompt_array = mx.array([prompt_ids], dtype=mx.int32)
    for tokens in generate_tokens(model, prompt_array, sampling=sampling, max_tokens=max_tokens,
                                  prefill_step_size=prefill_step_size):
        token = tokens.item()
        if timer.first is None:
            timer.first_tokens(1)
        else:
            timer.more_tokens(1)
        text = text_stream.add(token)
        yield GenerationChunk(text, token, text_stream.finish_reason, timer.stats())
        if text_stream.finish_reason is not None:
            return


def generate(model, tokenizer, prompt: str | Sequence[int], *, max_tokens: int = 256,
             sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
             stop_token_ids: Sequence[int] | None = None, prefill_step_size: int = 2048,
             **sampling_options: Any) -> GenerationResult:
    """Generate from one prompt; returns a :class:`GenerationResult`. Arguments as in
    :func:`stream_generate`."""
    prompt_ids = _prompt_ids(tokenizer, prompt)
    pieces: list[str] = []
    token_ids: list[int] = []
    chunk = None
    for chunk in stream_generate(model, tokenizer, prompt_ids, max_tokens=max_tokens, sampling=sampling,
                                 stop=stop, stop_token_ids=stop_token_ids,
                                 prefill_step_size=prefill_step_size, **sampling_options):
        pieces.append(chunk.text)
        token_ids.append(chunk.token)
    if chunk is None:  # max_tokens <= 0
        return GenerationResult("", [], prompt_ids, "length", _Timer(len(prompt_ids)).stats())
    return GenerationResult("".join(pieces), token_ids, prompt_ids, chunk.finish_reason, chunk.stats)


def batch_generate(model, tokenizer, prompts: Sequence[str | Sequence[int]], *, max_tokens: int = 256,
                   sampling: SamplingConfig | None = None, stop: Sequence[str] = (),
                   stop_token_ids: Sequence[int] | None = None, prefill_step_size: int = 2048,
                   row_seeds: Sequence[int] | None = None, **sampling_options: Any) -> list[GenerationResult]:
    """Generate from several prompts at once; returns one :class:`GenerationResult` per prompt.

    Prompts (text or id lists, as in :func:`stream_generate`) are left-padded to the same length
    and the padding is masked out through the model's ``mask`` argument, so each row's tokens are
    those it would get alone (exactly so with greedy sampling, up to float rounding). Each row
    stops on its own (EOS, stop token, stop string, ``max_tokens``); the batch ends when all have.
    ``stats`` is shared by all results and counts the whole batch. ``row_seeds`` (one per prompt)
    seeds each row on its own (see :func:`generate_tokens`).
    """
    if not prompts:
        return []
    sampling = _sampling_from(sampling, sampling_options)
    rows = [_prompt_ids(tokenizer, p) for p in prompts]
    longest = max(len(r) for r in rows)
    _warn_past_context(model, longest, max_tokens)
    # pad with each row's own first token: the value is masked out anyway, and it keeps the
    # repetition-penalty window free of tokens the row never saw
    padded = [[r[0]] * (longest - len(r)) + r for r in rows]
    mask = None
    if any(len(r) != longest for r in rows):
        mask = mx.array([[0] * (longest - len(r)) + [1] * len(r) for r in rows], dtype=mx.bool_)
    stop_ids = _stop_ids(tokenizer, stop_token_ids)
    streams = [_TextStream(tokenizer, stop, stop_ids, max_tokens) for _ in rows]
    _reset_peak_memory()
    timer = _Timer(sum(len(r) for r in rows))
    if max_tokens > 0:
        steps = generate_tokens(model, mx.array(padded, dtype=mx.int32), sampling=sampling,
                                max_tokens=max_tokens, mask=mask, prefill_step_size=prefill_step_size,
                                row_seeds=row_seeds)
        active = list(range(len(rows)))  # prompt index of each row still in the batch
        tokens = next(steps)
        timer.first_tokens(len(active))
        while True:
            for i, token in zip(active, tokens.tolist(), strict=True):
                streams[i].add(token)
            keep = [row for row, i in enumerate(active) if streams[i].finish_reason is None]
            if not keep:
                break
            # finished rows leave the batch, so the remaining ones decode faster
            active = [active[row] for row in keep]
            try:
                tokens = steps.send(keep if len(keep) < len(tokens) else None)
            except StopIteration:
                break
            timer.more_tokens(len(active))
        steps.close()
    stats = timer.stats()
    return [GenerationResult("".join(s.pieces), s.token_ids, r, s.finish_reason or "length", stats)
            for s, r in zip(streams, rows, strict=True)]


class _CallableModule(types.ModuleType):
    """``lazarus.generate`` is both this module and the :func:`generate` function: importing the
    submodule rebinds the package attribute to the module, so the module forwards calls."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
