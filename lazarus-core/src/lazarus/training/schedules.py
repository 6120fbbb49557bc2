"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay.

``learning_rate_at`` is the plain-Python definition (used for logging and tests);
``build_schedule`` returns the same curve as a function of an ``mx.array`` step, which is what
``mlx.optimizers`` calls (inside a compiled step, so it must be made of mlx ops).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lazarus.training.config import SCHEDULES


def _check(kind: str) -> None:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def learning_rate_at(step: int, *, peak: float, kind: str = "constant", warmup_steps: int = 0,
                     total_steps: int = 1, end: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Warmup rises linearly to ``peak`` over ``warmup_steps`` (step 0 already gets ``peak/warmup``,
    so no step is wasted at 0). After it, ``constant`` stays at ``peak``; ``linear`` and ``cosine``
    go from ``peak`` to ``end`` at ``total_steps`` and stay there.
    """
    _check(kind)
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if kind == "linear":
        return peak + (end - peak) * progress
    return end + 0.5 * (peak - end) * (1.0 + math.cos(math.pi * progress))


def build_schedule(*, peak: float, kind: str = "constant", warmup_steps: int = 0, total_steps: int = 1,
                   end: float = 0.0) -> Callable:
    """The same curve as :func:`learning_rate_at`, as ``step (mx.array) -> mx.array``."""
    import mlx.core as mx

    _check(kind)

    def schedule(step):
        step = mx.array(step).astype(mx.float32)
        if kind == "constant":
            after = mx.full(step.shape, peak, dtype=mx.float32)
        else:
            progress = mx.clip((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0, 1.0)
            if kind == "linear":
                after = peak + (end - peak) * progress
            else:
                after = end + 0.5 * (peak - end) * (1.0 + mx.cos(math.pi * progress))
        if warmup_steps <= 0:
            return after
        return mx.where(step < warmup_steps, peak * (step + 1) / warmup_steps, after)

    return schedule
