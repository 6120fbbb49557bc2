"""Step-wise batched generation: rows join and leave a running batch between steps.

:class:`BatchGenerator` is what continuous batching needs (a server, a rollout loop that refills
finished rows): :meth:`~BatchGenerator.add` queues a prompt and returns a row id,
:meth:`~BatchGenerator.step` runs one step (prefilling the rows that were added since the last step,
decoding one token for the others) and returns one :class:`RowStep` per row, and
:meth:`~BatchGenerator.remove` drops a row at once (a client that went away). A row leaves by itself
when it finishes (EOS, stop token, stop string, ``max_tokens``); each row has its own sampling
settings, stop strings, seed and log-probability request.

All rows share one KV cache with one position counter, as :func:`lazarus.generation.batch_generate`'s
left-padded batches do: a row that joins later is prefilled so that its prompt ends where the
running rows are, its earlier slots masked out. Attention with rotary embeddings depends only on
distances between positions, so a row's tokens are the ones it would get alone (exactly with
greedy sampling, up to float rounding). When a joining prompt is longer than the running rows'
cached length, the running rows are moved right in the cache and their cached keys rotated by the
same distance; when finished rows leave slots at the front unused by everyone, those slots are
dropped the same way, so the cache stays as long as the longest live row.

With ``prefix_cache_tokens`` the keys and values of finished rows (prompt and answer) are kept,
rotated back to position 0; a row whose prompt begins with at least ``min_prefix`` of those
tokens (and has the same ``prefix_key``) starts from them and prefills only the rest -- the next
turn of a chat, which repeats the conversation so far.

Every model of a Lazarus family (:class:`~lazarus.models.transformer.CausalLM`) works. ``tag`` and
``before_forward`` let a caller keep per-row model state in step with the batch (e.g. which adapter
a row uses): ``before_forward(tags)`` is called before every forward pass with the tags of the rows
in it, in batch order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
import mlx.core as mx

from lazarus.errors import LazarusError
from lazarus.generation.decode import _cache_arrays
from lazarus.generation.sampling import SamplingConfig, apply_repetition_penalty, make_sampler
from lazarus.generation.text import _prompt_ids, _stop_ids, _TextStream

__all__ = ["BatchGenerator", "RowStep"]

#: front slots no live row uses are dropped once there are at least this many
_TRIM_AT = 64


@attrs.frozen
class RowStep:
    """One row's result of :meth:`BatchGenerator.step`.

    ``token`` is the id generated in this step and ``text`` the new text (may be "" while a
    character or a possible stop string is incomplete; the EOS token's text and a stop string are
    never emitted). ``finish_reason`` is None until the row's last step, then "stop" or "length";
    the row has then left the batch. ``logprob`` is the token's log-probability under the model
    (before temperature and filters) and ``top_logprobs`` the ``(token id, log-probability)`` pairs
    of the most likely tokens, best first, when the row asked for them (else None).
    ``prompt_tokens`` and ``generated_tokens`` count the row so far.
    """

    row: int
    token: int
    text: str
    finish_reason: str | None
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    prompt_tokens: int
    generated_tokens: int
    tag: Any = None


class _Row:
    prefix_key: Any  #: set by BatchGenerator.add

    def __init__(self, row_id, prompt, sampling, text, logprobs, tag):
        self.id = row_id
        self.prompt = prompt
        self.sampling = sampling
        self.text = text
        self.logprobs = logprobs
        self.tag = tag
        self.key = mx.random.key(sampling.seed) if sampling.seed is not None and not sampling.greedy else None
        window = sampling.repetition_context_size
        self.history = list(prompt[-window:]) if sampling.repetition_penalty != 1.0 else None


class BatchGenerator:
    """Continuous batching over one model: rows join with :meth:`add` and leave when finished or
    :meth:`remove`\\ d; :meth:`step` advances every row by one token.

    ``tokenizer`` turns prompts and tokens into text (as in :func:`lazarus.generation.stream_generate`).
    ``max_batch`` caps how many rows decode together (rows added beyond it wait, in order, for a
    free place). ``prefill_step_size`` is the most prompt tokens per forward pass while prefilling.
    ``before_forward(tags)``, ``prefix_cache_tokens`` (0: off) and ``min_prefix``: see the module
    docstring.
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 32, prefill_step_size: int = 2048,
                 before_forward: Callable[[list], None] | None = None, prefix_cache_tokens: int = 0,
                 min_prefix: int = 16):
        if max_batch < 1:
            raise LazarusError(f"max_batch must be >= 1, got {max_batch}")
        blocks = getattr(model, "blocks", None) or []
        if not blocks or not all(hasattr(getattr(b, "self_attn", None), "_rope") for b in blocks):
            raise LazarusError(f"{type(model).__name__} is not a Lazarus family model (blocks with rotary "
                               "attention); step-wise batching needs one (load it with lazarus.load_model)")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_step_size = prefill_step_size
        self.before_forward = before_forward
        self._ids = itertools.count()
        self._waiting: list[_Row] = []
        self._rows: list[_Row] = []  # rows in the batch, in cache order
        # the batch's cache (one KVCache per block; None while no row runs), typed Any: the methods
        # that read it run only while rows do
        self._cache: Any = None
        # (B,) each row's sampled token not yet returned (the next forward's input) and its logits
        self._pending: Any = None  # mx.array while rows run
        self._pending_logits: Any = None
        self._steps = 0
        self._samplers: dict = {}
        self._prefixes = _PrefixCache(prefix_cache_tokens, min_prefix) if prefix_cache_tokens > 0 else None
        self._ropes = [block.self_attn._rope for block in blocks]

    # -- public ---------------------------------------------------------------------------------
    def add(self, prompt: str | Sequence[int], *, max_tokens: int = 256, sampling: SamplingConfig | None = None,
            stop: Sequence[str] = (), stop_token_ids: Sequence[int] | None = None,
            logprobs: int | None = None, tag: Any = None, prefix_key: Any = None) -> int:
        """Queue a prompt (text, encoded with special tokens, or a list of ids used as they are);
        returns its row id. It joins the batch at the next :meth:`step`. ``logprobs``: None for
        none, 0 for the generated token's, k for the k most likely tokens' as well.
        ``prefix_key``: with ``prefix_cache_tokens``, a row reuses the cached keys and values of
        an earlier row with the same key whose tokens (prompt and answer) begin its prompt; rows
        whose ``before_forward`` state differs (another adapter) must have different keys."""
        ids = _prompt_ids(self.tokenizer, prompt)
        if max_tokens < 1:
            raise LazarusError(f"max_tokens must be >= 1, got {max_tokens}")
        sampling = sampling or SamplingConfig()
        text = _TextStream(self.tokenizer, stop, _stop_ids(self.tokenizer, stop_token_ids), max_tokens)
        row = _Row(next(self._ids), ids, sampling, text, logprobs, tag)
        row.prefix_key = prefix_key
        self._waiting.append(row)
        return row.id

    def remove(self, row_id: int) -> bool:
        """Drop a row now (waiting or running); returns whether it was there."""
        for i, row in enumerate(self._waiting):
            if row.id == row_id:
                del self._waiting[i]
                return True
        for i, row in enumerate(self._rows):
            if row.id == row_id:
                self._keep([j for j in range(len(self._rows)) if j != i])
                return True
        return False

    def __len__(self) -> int:
        """Rows running or waiting."""
        return len(self._rows) + len(self._waiting)

    @property
    def running(self) -> int:
        """Rows in the batch now."""
        return len(self._rows)

    def step(self) -> list[RowStep]:
        """Advance every row by one token; returns one :class:`RowStep` per running row.

        Waiting rows that fit join first (prefilled; their first token is sampled from the
        prefill). The forward pass for the following step is queued on the device before this
        step's tokens are read back, so the device never waits for the host's text work. Finished
        rows leave the batch before this returns."""
        free = self.max_batch - len(self._rows)
        if free > 0 and self._waiting:
            joining, self._waiting = self._waiting[:free], self._waiting[free:]
            # rows that reuse a cached prefix are prefilled one by one, the rest together
            groups, fresh = [], []
            for row in joining:
                reuse = self._prefixes.lookup(row.prefix_key, row.prompt) if self._prefixes else None
                if reuse is None:
                    fresh.append(row)
                else:
                    groups.append(([row], reuse))
            if fresh:
                groups.insert(0, (fresh, None))
            for group, reuse in groups:
                logits = self._prefill(group, reuse).astype(mx.float32)
                tokens = self._pick(group, logits)
                if len(self._rows) == len(group):
                    self._pending, self._pending_logits = tokens, logits
                else:
                    self._pending = mx.concatenate([self._pending, tokens])
                    self._pending_logits = mx.concatenate([self._pending_logits, logits])
        if not self._rows:
            return []
        tokens, logits = self._pending, self._pending_logits
        rows = list(self._rows)
        if any(row.history is not None for row in rows):  # the penalty needs these tokens' values
            for row, token in zip(rows, cast("list[int]", tokens.tolist()), strict=True):
                if row.history is not None:
                    row.history = (row.history + [token])[-row.sampling.repetition_context_size:]
        self._forward(rows, tokens[:, None])
        self._pending_logits = self._logits.astype(mx.float32)
        self._pending = self._pick(rows, self._pending_logits)
        mx.async_eval(self._pending)
        out = self._emit(rows, tokens, logits)
        self._steps += 1
        if self._steps % 256 == 0:
            mx.clear_cache()
        finished = {s.row for s in out if s.finish_reason is not None}
        if finished and self._prefixes is not None:
            for i, row in enumerate(self._rows):
                if row.id in finished:
                    self._remember(i, row)
        if finished:
            self._keep([i for i, row in enumerate(self._rows) if row.id not in finished])
        return out

    # -- forward passes -------------------------------------------------------------------------
    def _forward(self, rows: list[_Row], tokens: mx.array) -> None:
        if self.before_forward is not None:
            self.before_forward([row.tag for row in rows])
        self._logits = self.model(tokens, cache=self._cache)[:, -1, :]

    def _prefill(self, joining: list[_Row], reuse=None) -> mx.array:
        """Prefill ``joining`` so that their prompts end at the running rows' position; merge them
        into the batch; return their last-position logits (J, V). ``reuse``: ``(m, keys, values)``
        of the first m prompt tokens of a single joining row (rotated as if at position 0)."""
        longest = max(len(r.prompt) for r in joining)
        cached = self._cache[0].offset if self._cache else longest
        if longest > cached:
            self._shift(longest - cached)
            cached = longest
        start = cached - longest  # masked slots before the longest joining prompt
        padded = [[r.prompt[0]] * (longest - len(r.prompt)) + r.prompt for r in joining]
        real = [[False] * (longest - len(r.prompt)) + [True] * len(r.prompt) for r in joining]
        ids = mx.array(padded, dtype=mx.int32)
        mask = mx.array(real) if start or any(len(r.prompt) != longest for r in joining) else None
        cache = self._empty_cache(len(joining), start)
        done = 0
        if reuse is not None:  # the reused slots follow the masked ones, rotated to where they now are
            done, keys, values = reuse
            for layer, rope, k, v in zip(cache, self._ropes, keys, values, strict=True):
                k = _rotate(k, rope, start) if start else k
                layer.keys = k if layer.keys is None else mx.concatenate([layer.keys, k], axis=2)
                layer.values = v if layer.values is None else mx.concatenate([layer.values, v], axis=2)
                layer.offset = start + done
                if layer.key_mask is not None:
                    layer.key_mask = mx.concatenate([layer.key_mask, mx.ones((1, done), dtype=mx.bool_)], axis=1)
        if self.before_forward is not None:
            self.before_forward([row.tag for row in joining])
        while longest - done > 1:  # all but the last token: only the cache is computed
            n = min(self.prefill_step_size, longest - done - 1)
            self.model(ids[:, done:done + n], cache=cache, mask=None if mask is None else mask[:, done:done + n])
            mx.eval(_cache_arrays(cache))
            done += n
        logits = self.model(ids[:, done:], cache=cache, mask=None if mask is None else mask[:, done:])[:, -1, :]
        self._merge(cache, joining)
        return logits

    def _empty_cache(self, batch: int, start: int) -> list:
        """A fresh cache, with ``start`` masked slots already in it when rows are running."""
        cache = self.model.make_cache()
        if start:
            for mine, theirs in zip(cache, self._cache, strict=True):
                _, heads, _, dim = theirs.keys.shape
                mine.keys = mx.zeros((batch, heads, start, dim), dtype=theirs.keys.dtype)
                mine.values = mx.zeros((batch, heads, start, theirs.values.shape[3]), dtype=theirs.values.dtype)
                mine.offset = start
                mine.key_mask = mx.zeros((batch, start), dtype=mx.bool_)
        return cache

    def _merge(self, cache: list, joining: list[_Row]) -> None:
        if not self._cache:
            self._cache, self._rows = cache, list(joining)
            return
        length = cache[0].offset
        running = len(self._rows)
        for old, new in zip(self._cache, cache, strict=True):
            old.keys = mx.concatenate([old.keys[..., :length, :], new.keys[..., :length, :]], axis=0)
            old.values = mx.concatenate([old.values[..., :length, :], new.values[..., :length, :]], axis=0)
            old.key_mask = mx.concatenate([_key_mask(old, running), _key_mask(new, len(joining))], axis=0)
        self._rows.extend(joining)

    def _shift(self, k: int) -> None:
        """Move every cached row ``k`` slots right (k > 0, masked slots in front) or drop ``-k``
        front slots (k < 0), rotating the cached keys by ``k`` positions so that distances hold."""
        running = len(self._rows)
        for layer, rope in zip(self._cache, self._ropes, strict=True):
            keys, values, length = layer.keys[..., :layer.offset, :], layer.values[..., :layer.offset, :], layer.offset
            key_mask = _key_mask(layer, running)
            if k < 0:
                keys, values, key_mask = keys[..., -k:, :], values[..., -k:, :], key_mask[:, -k:]
            batch, heads, slots, dim = keys.shape
            keys = _rotate(keys, rope, k)
            if k > 0:
                keys = mx.concatenate([mx.zeros((batch, heads, k, dim), keys.dtype), keys], axis=2)
                values = mx.concatenate([mx.zeros((batch, heads, k, values.shape[3]), values.dtype), values], axis=2)
                key_mask = mx.concatenate([mx.zeros((batch, k), dtype=mx.bool_), key_mask], axis=1)
            layer.keys, layer.values, layer.key_mask, layer.offset = keys, values, key_mask, length + k

    def _remember(self, i: int, row: _Row) -> None:
        """Store a finished row's keys and values (prompt and answer) for later rows to reuse."""
        layer0 = self._cache[0]
        first = 0 if layer0.key_mask is None else int(mx.argmax(layer0.key_mask[i]).item())  # type: ignore[arg-type]  # mlx's stub: item() may be complex
        tokens = row.prompt + row.text.token_ids
        if layer0.offset - first != len(tokens):  # every token fed is in the cache; anything else: skip
            return
        keys = [_rotate(layer.keys[i:i + 1, :, first:layer.offset, :], rope, -first) if first
                else layer.keys[i:i + 1, :, first:layer.offset, :] for layer, rope in zip(self._cache, self._ropes,
                                                                                        strict=True)]
        values = [layer.values[i:i + 1, :, first:layer.offset, :] for layer in self._cache]
        mx.async_eval(keys, values)  # copies, so the batch's buffers can go; no wait for the queued step
        assert self._prefixes is not None  # step() remembers rows only with a prefix cache
        self._prefixes.store(row.prefix_key, tokens, keys, values)

    def _keep(self, keep: list[int]) -> None:
        """Keep only these batch rows (in this order); free the cache when none are left."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._pending = self._pending_logits = None
            return
        rows = mx.array(keep, dtype=mx.int32)
        for layer in self._cache:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
            if layer.key_mask is not None:
                layer.key_mask = layer.key_mask[rows]
        self._pending, self._pending_logits = self._pending[rows], self._pending_logits[rows]
        key_mask = self._cache[0].key_mask
        if key_mask is not None:  # drop front slots no live row uses any more
            unused = int(mx.argmax(key_mask.any(axis=0)).item())  # type: ignore[arg-type]  # as above
            if unused >= _TRIM_AT:
                self._shift(-unused)

    # -- sampling -------------------------------------------------------------------------------
    def _emit(self, rows: list[_Row], tokens: mx.array, logits: mx.array) -> list[RowStep]:
        """Read back one step's tokens; text, stop checks and log-probabilities per row."""
        # (mlx's stub types tolist() as any nesting; a (B,) array gives a flat list)
        token_list = cast("list[int]", tokens.tolist())
        want = [i for i, r in enumerate(rows) if r.logprobs is not None]
        chosen: dict[int, float] = {}
        tops: dict[int, list[tuple[int, float]]] = {}
        if want:
            index = mx.array(want, dtype=mx.int32)
            logprobs = logits[index] - mx.logsumexp(logits[index], axis=-1, keepdims=True)
            picked = cast("list[float]", mx.take_along_axis(logprobs, tokens[index][:, None], axis=-1)[:, 0].tolist())
            k = max(rows[i].logprobs for i in want)
            if k > 0:
                order = mx.argsort(-logprobs, axis=-1)[:, :k]
                top_ids = cast("list[list[int]]", order.tolist())
                top_values = cast("list[list[float]]", mx.take_along_axis(logprobs, order, axis=-1).tolist())
            for j, i in enumerate(want):
                chosen[i] = picked[j]
                if rows[i].logprobs:
                    tops[i] = list(zip(top_ids[j][:rows[i].logprobs], top_values[j][:rows[i].logprobs], strict=True))
        out = []
        for i, (row, token) in enumerate(zip(rows, token_list, strict=True)):
            text = row.text.add(token)
            out.append(RowStep(row.id, token, text, row.text.finish_reason, chosen.get(i), tops.get(i),
                               len(row.prompt), row.text.count, row.tag))
        return out

    def _pick(self, rows: list[_Row], logits: mx.array) -> mx.array:
        """The next token of every row, each with its own sampling settings."""
        if all(r.sampling.greedy and r.history is None for r in rows):
            return mx.argmax(logits, axis=-1).astype(mx.int32)
        picked: list[Any] = [None] * len(rows)
        groups: dict[SamplingConfig, list[int]] = {}
        for i, row in enumerate(rows):
            if row.history is not None:
                penalised = apply_repetition_penalty(logits[i:i + 1], mx.array([row.history], dtype=mx.int32),
                                                     row.sampling.repetition_penalty)
                logits = mx.concatenate([logits[:i], penalised, logits[i + 1:]]) if len(rows) > 1 else penalised
            if row.key is not None:  # its own key chain: the same samples in any batch
                row.key, sub = mx.random.split(row.key)
                picked[i] = self._sampler(row.sampling)(logits[i:i + 1], sub)
            else:
                groups.setdefault(attrs.evolve(row.sampling, seed=None), []).append(i)
        for sampling, members in groups.items():
            index = mx.array(members, dtype=mx.int32)
            drawn = self._sampler(sampling)(logits[index])
            for j, i in enumerate(members):
                picked[i] = drawn[j:j + 1]
        return mx.concatenate([p.reshape(1) for p in picked]).astype(mx.int32)

    def _sampler(self, sampling: SamplingConfig):
        name = attrs.evolve(sampling, seed=None)
        if name not in self._samplers:
            self._samplers[name] = make_sampler(name)
        return self._samplers[name]


def _key_mask(layer, batch: int) -> mx.array:
    """A layer cache's (B, offset) real-key mask (all real when it has none)."""
    if layer.key_mask is None:
        return mx.ones((batch, layer.offset), dtype=mx.bool_)
    return layer.key_mask[:, :layer.offset].astype(mx.bool_)


def _rotate(keys: mx.array, rope, k: int) -> mx.array:
    """Cached (B, H, S, D) keys rotated ``k`` more positions (rotations add up)."""
    batch, heads, slots, dim = keys.shape
    return rope(keys.reshape(batch * heads * slots, 1, dim), k).reshape(batch, heads, slots, dim)


class _PrefixCache:
    """Keys and values of finished rows (rotated to position 0), looked up by longest common prefix.

    Holds at most ``max_tokens`` tokens in all, dropping the least recently used entries. A hit
    needs ``min_prefix`` shared tokens and leaves at least one prompt token to compute.
    """

    def __init__(self, max_tokens: int, min_prefix: int):
        self.max_tokens, self.min_prefix = max_tokens, max(1, min_prefix)
        self.entries: dict[int, tuple] = {}  # insertion order = recency
        self._ids = itertools.count()
        self.hits = 0

    def lookup(self, key, prompt: list[int]):
        best, best_id = 0, None
        for entry_id, (entry_key, tokens, _, _) in self.entries.items():
            if entry_key != key:
                continue
            n, limit = 0, min(len(tokens), len(prompt) - 1)
            while n < limit and tokens[n] == prompt[n]:
                n += 1
            if n > best:
                best, best_id = n, entry_id
        if best < self.min_prefix or best_id is None:
            return None
        entry = self.entries.pop(best_id)
        self.entries[best_id] = entry  # most recently used
        self.hits += 1
        _, _, keys, values = entry
        return best, [k[:, :, :best, :] for k in keys], [v[:, :, :best, :] for v in values]

    def store(self, key, tokens: list[int], keys: list, values: list) -> None:
        if len(tokens) > self.max_tokens:
            return
        for entry_id, (entry_key, old, _, _) in list(self.entries.items()):
            if entry_key == key and old == tokens[:len(old)]:  # the new entry covers it
                del self.entries[entry_id]
        self.entries[next(self._ids)] = (key, tokens, keys, values)
        while sum(len(e[1]) for e in self.entries.values()) > self.max_tokens:
            del self.entries[next(iter(self.entries))]
