"""The optimizer every trainer uses: AdamW with the configured schedule, plus global-norm clipping."""

from __future__ import annotations

from typing import cast

from lazarus.training.schedules import build_schedule


def build_optimizer(config, total_steps: int):
    """AdamW (``mlx.optimizers``) whose learning rate follows ``config``'s schedule over ``total_steps``."""
    import mlx.optimizers as optim

    from lazarus.training.config import resolve_warmup

    schedule = build_schedule(peak=config.learning_rate, kind=config.lr_schedule,
                              warmup_steps=resolve_warmup(config, total_steps), total_steps=total_steps,
                              end=config.min_learning_rate)
    return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def clip_by_global_norm(grads, max_norm: float):
    """Scale ``grads`` so their global L2 norm is at most ``max_norm`` (0 = no clipping).

    Returns ``(grads, norm)`` where ``norm`` is the norm before clipping (an ``mx.array``).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    flat = cast("list[tuple[str, mx.array]]", tree_flatten(grads))
    squares = [mx.sum(mx.square(g.astype(mx.float32))) for _, g in flat]
    norm = mx.sqrt(sum(squares[1:], squares[0])) if squares else mx.array(0.0)
    if max_norm <= 0:
        return grads, norm
    factor = mx.minimum(1.0, max_norm / (norm + 1e-6))
    return tree_map(lambda g: (g * factor).astype(g.dtype), grads), norm
