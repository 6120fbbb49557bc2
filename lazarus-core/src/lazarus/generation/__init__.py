"""Text generation: sampling, KV-cache decoding, streaming, batched generation.

``lazarus.generate`` and ``lazarus.stream_generate`` are the functions of this package (plain
functions: ``from lazarus import generate``). Modules: :mod:`~lazarus.generation.sampling`,
:mod:`~lazarus.generation.decode` (the token loop), :mod:`~lazarus.generation.text`.

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

from lazarus.generation.decode import generate_tokens
from lazarus.generation.sampling import (
    GenerationChunk,
    GenerationResult,
    GenerationStats,
    SamplingConfig,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_sampler,
)
from lazarus.generation.text import (
    ContextLengthWarning,
    batch_generate,
    context_warning,
    generate,
    stream_generate,
)

__all__ = [
    "ContextLengthWarning",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStats",
    "SamplingConfig",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "batch_generate",
    "context_warning",
    "generate",
    "generate_tokens",
    "make_sampler",
    "stream_generate",
]
