"""Action distributions an expert returns from ``step``: batched, mlx.

Both keep the *raw* sample (what the log-probability is of) apart from the *action* the
environment gets, so PPO's ratio ``exp(logp_new(raw) - logp_old(raw))`` is exact:

- :class:`Categorical`: ``logits`` (B, n); raw = action = an int index.
- :class:`SquashedNormal`: a diagonal normal over ``u`` (B, d); the action is
  ``low + (tanh(u) + 1) / 2 · (high - low)``, so it is always inside the bounds. The log-prob is
  that of ``u`` (the tanh Jacobian does not depend on the parameters, so it cancels in ratios);
  the entropy is the normal's.

``sample(key)`` takes one key, or one key per row (``(B, 2)``): with per-row keys a row's sample
depends on its own key alone, so a rank sampling its share of a batch draws what the whole batch
would (data-parallel expert training).
"""

from __future__ import annotations

import math

import mlx.core as mx


class Categorical:
    """``n`` discrete actions from ``logits`` (..., n)."""

    def __init__(self, logits: mx.array) -> None:
        self.logits = logits
        self.logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def sample(self, key=None) -> tuple[mx.array, mx.array]:
        """``(action, raw)``: both the sampled index, int32 (...,)."""
        if key is not None and key.ndim == 2:  # one key per row
            index = mx.vmap(lambda row, k: mx.random.categorical(row, key=k))(self.logits, key).astype(mx.int32)
            return index, index
        index = mx.random.categorical(self.logits, key=key).astype(mx.int32)
        return index, index

    def mode(self) -> mx.array:
        return mx.argmax(self.logits, axis=-1).astype(mx.int32)

    def to_action(self, raw: mx.array) -> mx.array:
        return raw

    def log_prob(self, raw: mx.array) -> mx.array:
        return mx.take_along_axis(self.logp, raw.astype(mx.int32)[..., None], axis=-1)[..., 0]

    def entropy(self) -> mx.array:
        return -(mx.exp(self.logp) * self.logp).sum(axis=-1)


class SquashedNormal:
    """Bounded continuous actions: a normal ``(mean, exp(log_std))`` over (..., d), squashed into
    ``[low, high]`` by tanh."""

    def __init__(self, mean: mx.array, log_std: mx.array, low, high) -> None:
        self.mean = mean
        self.log_std = mx.broadcast_to(log_std, mean.shape)
        self.low = mx.array(low, dtype=mx.float32)
        self.high = mx.array(high, dtype=mx.float32)

    def sample(self, key=None) -> tuple[mx.array, mx.array]:
        """``(action, raw)``: the bounded action and the unbounded normal sample, float (..., d)."""
        if key is not None and key.ndim == 2:  # one key per row
            noise = mx.vmap(lambda k: mx.random.normal(self.mean.shape[1:], key=k))(key)
        else:
            noise = mx.random.normal(self.mean.shape, key=key)
        raw = self.mean + mx.exp(self.log_std) * noise
        return self.to_action(raw), raw

    def to_action(self, raw: mx.array) -> mx.array:
        action = self.low + (mx.tanh(raw) + 1.0) * 0.5 * (self.high - self.low)
        return mx.clip(action, self.low, self.high)  # tanh(±large) rounds to ±1 exactly; keep it so

    def mode(self) -> mx.array:
        return self.to_action(self.mean)

    def log_prob(self, raw: mx.array) -> mx.array:
        z = (raw - self.mean) * mx.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi)).sum(axis=-1)

    def entropy(self) -> mx.array:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(axis=-1)
