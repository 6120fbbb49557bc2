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
        if self.keys is None or end > self.keys.shape[2]:
            blocks = -(-new // self.step) * self.step
            grow_k = mx.zeros((*keys.shape[:2], blocks, keys.shape[3]), dtype=keys.dtype)
            grow_v = mx.zeros((*values.shape[:2], blocks, values.shape[3]), dtype=values.dtype)
            if self.keys is None:
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
        if self.keys is None:
            return None
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def __len__(self) -> int:
        return self.offset

    def __repr__(self) -> str:
        return f"KVCache(offset={self.offset})"
