"""The key/value cache used for incremental decoding."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """Keys and values of one attention layer, grown in blocks of ``step`` positions.

    ``update_and_fetch(keys, values)`` appends ``(B, H_kv, T, D)`` arrays and returns everything
    cached so far. ``offset`` (the number of cached positions) is shared by the whole batch: a
    left-padded batch keeps its pad positions in the cache and masks them through ``key_mask``,
    the ``(B, offset)`` 1/0 array the model remembers between calls (None when nothing is padded).
    Growing in blocks keeps decoding from copying the whole cache on every token.
    """

    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self.key_mask: mx.array | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start, new = self.offset, keys.shape[2]
        end = start + new
        if self.keys is None or self.values is None or end > self.keys.shape[2]:
            blocks = -(-new // self.step) * self.step
            grow_k = mx.zeros((*keys.shape[:2], blocks, keys.shape[3]), dtype=keys.dtype)
            grow_v = mx.zeros((*values.shape[:2], blocks, values.shape[3]), dtype=values.dtype)
            if self.keys is None or self.values is None:  # (both are None or neither)
                self.keys, self.values = grow_k, grow_v
            else:
                self.keys = mx.concatenate([self.keys[..., :start, :], grow_k], axis=2)
                self.values = mx.concatenate([self.values[..., :start, :], grow_v], axis=2)
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def trim(self, n: int) -> int:
        """Forget the last ``n`` positions (e.g. rejected draft tokens); returns how many were dropped."""
        n = min(self.offset, n)
        self.offset -= n
        if self.key_mask is not None:
            self.key_mask = self.key_mask[:, : self.offset]
        return n

    @property
    def state(self) -> tuple[mx.array, mx.array] | None:
        """The cached ``(keys, values)`` up to ``offset``, or None when empty."""
        if self.keys is None or self.values is None:
            return None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def __len__(self) -> int:
        return self.offset

    def __repr__(self) -> str:
        return f"KVCache(offset={self.offset})"


class StaticKVCache:
    """Keys and values of one attention layer in a buffer of fixed ``capacity`` positions.

    What a compiled decode step needs: shapes never change, and ``offset`` may be a scalar int32
    ``mx.array``, so one traced step serves every position. ``update_and_fetch`` writes the new
    ``(B, H_kv, T, D)`` keys/values at ``offset`` and returns the whole buffer; positions not
    written yet are hidden by the mask the model builds from ``offset`` (:func:`static_mask`).
    ``key_mask`` is a ``(B, capacity)`` 1/0 array of real keys (left padding 0), or None.
    """

    def __init__(self, keys: mx.array, values: mx.array, offset, key_mask: mx.array | None = None):
        self.keys, self.values = keys, values
        self.offset = offset
        self.key_mask = key_mask

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @classmethod
    def from_cache(cls, cache: KVCache, capacity: int) -> StaticKVCache:
        """A static copy of a filled :class:`KVCache`, with room for ``capacity`` positions in all."""
        state = cache.state
        assert state is not None, "a filled cache"
        keys, values = state
        batch, heads, length, _ = keys.shape
        pad = capacity - length
        keys = mx.concatenate([keys, mx.zeros((batch, heads, pad, keys.shape[3]), keys.dtype)], axis=2)
        values = mx.concatenate([values, mx.zeros((batch, heads, pad, values.shape[3]), values.dtype)], axis=2)
        key_mask = None
        if cache.key_mask is not None:  # positions after the prompt are real once written
            key_mask = mx.concatenate([cache.key_mask.astype(mx.bool_),
                                       mx.ones((batch, pad), dtype=mx.bool_)], axis=1)
        return cls(keys, values, mx.array(length, dtype=mx.int32), key_mask)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start = mx.reshape(self.offset, (1,)) if isinstance(self.offset, mx.array) else mx.array([self.offset])
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def __repr__(self) -> str:
        return f"StaticKVCache(capacity={self.capacity})"


def static_mask(num_new: int, offset, capacity: int, key_mask: mx.array | None = None,
                window: int | None = None) -> mx.array:
    """The attention mask over a :class:`StaticKVCache` buffer for ``num_new`` queries at ``offset``.

    ``offset`` may be an array. True where a query may attend: keys at or before it (and within
    ``window``), real per ``key_mask``; a query always sees itself. Shape (T, capacity), or
    (B, 1, T, capacity) with a ``key_mask``.
    """
    query_pos = offset + mx.arange(num_new)[:, None]
    key_pos = mx.arange(capacity)[None]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed = allowed & (query_pos - key_pos < window)
    if key_mask is None:
        return allowed
    real_key = key_mask[:, None, :] | (key_pos == query_pos)[None]
    return (allowed[None] & real_key)[:, None]
