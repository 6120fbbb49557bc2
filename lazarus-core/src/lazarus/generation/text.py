"""Text level: :func:`stream_generate`, :func:`generate`, :func:`batch_generate` (tokenizing,
stop strings and ids, timing, the context-length warning)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import attrs
import mlx.core as mx

from lazarus.errors import LazarusError
from lazarus.generation.decode import generate_tokens
from lazarus.generation.sampling import GenerationChunk, GenerationResult, GenerationStats, SamplingConfig


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
        self.first: float | None = None  # when the first sampled token was read back
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
        token = cast(int, tokens.item())  # (a (1,) int32 array; mlx's stub allows any scalar)
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
        token_ids.append(cast(int, chunk.token))  # (stream_generate gives every chunk its token)
    if chunk is None:  # max_tokens <= 0
        return GenerationResult("", [], prompt_ids, "length", _Timer(len(prompt_ids)).stats())
    return GenerationResult("".join(pieces), token_ids, prompt_ids, chunk.finish_reason or "length", chunk.stats)


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
            for i, token in zip(active, cast("list[int]", tokens.tolist()), strict=True):
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
