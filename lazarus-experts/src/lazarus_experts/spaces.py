"""Observation and action spaces, as in gym: :class:`Discrete` (``n`` choices, 0..n-1) and
:class:`Box` (a float vector with bounds). Environments set ``observation_space`` and
``action_space`` to one of these (or anything with the same attributes); expert configs hold the
action space they act in. Plain Python, no mlx: spaces are described in JSON next to a saved expert.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

from lazarus.errors import LazarusError


def _floats(value) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


@attrs.frozen
class Discrete:
    """``n`` actions (or observations) ``0 .. n-1``."""

    n: int = attrs.field(converter=int)
    kind = "discrete"

    def __attrs_post_init__(self):
        if self.n < 1:
            raise LazarusError(f"a Discrete space needs n >= 1, got {self.n}")

    @property
    def size(self) -> int:
        """Length of the vector an expert sees for one value of this space (one-hot)."""
        return self.n

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int,)) and not isinstance(value, bool) and 0 <= value < self.n

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.n)

    def to_dict(self) -> dict:
        return {"kind": "discrete", "n": self.n}


@attrs.frozen
class Box:
    """A float vector of ``len(low)`` entries, ``low[i] <= x[i] <= high[i]`` (bounds may be ±inf
    for observations; an action space needs finite bounds)."""

    low: tuple[float, ...] = attrs.field(converter=_floats)
    high: tuple[float, ...] = attrs.field(converter=_floats)
    kind = "continuous"

    def __attrs_post_init__(self):
        if len(self.low) != len(self.high) or not self.low:
            raise LazarusError(f"a Box needs low and high of the same non-zero length, got {self.low} and {self.high}")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise LazarusError(f"a Box needs low <= high, got {self.low} and {self.high}")

    @property
    def shape(self) -> tuple[int]:
        return (len(self.low),)

    @property
    def size(self) -> int:
        return len(self.low)

    @property
    def bounded(self) -> bool:
        return all(math.isfinite(v) for v in (*self.low, *self.high))

    def contains(self, value: Any) -> bool:
        try:
            values = _floats(value)
        except (TypeError, ValueError):
            return False
        return len(values) == self.size and all(lo <= v <= hi for v, lo, hi in zip(values, self.low, self.high, strict=True))

    def sample(self, rng: random.Random) -> list[float]:
        if not self.bounded:
            raise LazarusError("cannot sample uniformly from a Box with infinite bounds")
        return [rng.uniform(lo, hi) for lo, hi in zip(self.low, self.high, strict=True)]

    def to_dict(self) -> dict:
        return {"kind": "continuous", "low": list(self.low), "high": list(self.high)}


Space = Discrete | Box


def as_space(value: Any, what: str = "space") -> Space | Text:
    """A :class:`Discrete` or :class:`Box` (or :class:`Text`) from a space, a dict written by ``to_dict`` or any object
    with ``n`` (discrete) or ``low``/``high`` (continuous), as gym spaces have."""
    if isinstance(value, (Discrete, Box, Text)):
        return value
    if isinstance(value, dict):
        kind = value.get("kind")
        if kind == "discrete":
            return Discrete(value["n"])
        if kind == "continuous":
            return Box(value["low"], value["high"])
        if kind == "text":
            return Text(value.get("max_length", 4096))
        raise LazarusError(f"{what}: unknown kind {kind!r}; use 'discrete' (with n) or 'continuous' (with low, high)")
    if hasattr(value, "n"):
        return Discrete(value.n)
    if hasattr(value, "low") and hasattr(value, "high"):
        import numpy as np

        return Box(np.ravel(value.low).tolist(), np.ravel(value.high).tolist())
    raise LazarusError(f"{what}: {value!r} is not a space; use lazarus_experts.spaces.Discrete(n) or "
                       "Box(low, high)")


@attrs.frozen
class Text:
    """Free text of at most ``max_length`` characters: the observations and actions of an
    environment an LLM acts in (``arith-delegate``). Experts cannot act in it."""

    max_length: int = 4096
    kind = "text"

    def contains(self, value: Any) -> bool:
        return isinstance(value, str) and len(value) <= self.max_length

    def to_dict(self) -> dict:
        return {"kind": "text", "max_length": self.max_length}
