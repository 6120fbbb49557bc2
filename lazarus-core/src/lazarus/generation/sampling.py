"""Sampling: :class:`SamplingConfig`, the result and statistics records, the logits filters
(pure functions of (B, V) arrays) and :func:`make_sampler`."""

from __future__ import annotations

import math

import attrs
import mlx.core as mx

from lazarus.errors import LazarusError

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
