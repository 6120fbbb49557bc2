"""The compiled steps of the training loop (:meth:`lazarus.training.trainer.Trainer._build_steps`)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from lazarus.training.optimizer import clip_by_global_norm


def build_steps(trainer) -> tuple:
    """``(micro_step, apply_step, eval_step)`` of a trainer, compiled with ``mx.compile`` unless its
    config says ``compile = false``: ``micro_step(arrays) -> (total, count, metrics, grads)`` of one
    batch (a named tree); ``apply_step(grads, count) -> grad norm`` sums over ranks, divides by the
    global count, clips and updates; ``eval_step(arrays) -> (total, count, metrics)``."""
    model, optimizer, world, config = trainer.model, trainer.optimizer, trainer.world, trainer.config
    loss_and_grad = nn.value_and_grad(model, trainer._loss_parts)

    names: list[str] = []  # the metric names, read while tracing

    def packed_step(arrays):
        (total, count, aux), grads = loss_and_grad(model, arrays)
        # count and metrics leave as one stacked array: mx.compile (mlx 0.32) fails on a
        # value_and_grad step whose outputs repeat an array, or hold a node of the loss
        # (e.g. a loss's count that is also part of its total: "IndexError: _Map_base::at")
        names[:] = list(aux)
        return total, mx.stack([count.astype(mx.float32), *(aux[k].astype(mx.float32) for k in names)]), grads

    def micro_step(arrays):
        total, scalars, grads = step(arrays)
        return total, scalars[0], {k: scalars[i + 1] for i, k in enumerate(names)}, grads

    def apply_step(grads, count):
        # grads are sums over this rank's items: sum over ranks, divide by the global count
        grads, count = world.all_sum((grads, count))
        count = mx.maximum(count, 1)
        grads = tree_map(lambda g: g / count.astype(g.dtype), grads)
        grads, norm = clip_by_global_norm(grads, config.max_grad_norm)
        optimizer.update(model, grads)
        return norm

    def eval_step(arrays):
        return trainer._loss_parts(model, arrays)

    if config.compile:
        # value_and_grad swaps the parameters in and out of the model, so the model's state is
        # an output too; the random state carries dropout noise from step to step
        step = mx.compile(packed_step, inputs=[model.state, mx.random.state],
                          outputs=[model.state, mx.random.state])
    else:
        step = packed_step
    if config.compile:
        apply_step = mx.compile(apply_step, inputs=[model.state, optimizer.state],
                                outputs=[model.state, optimizer.state])
        eval_step = mx.compile(eval_step, inputs=[model.state])
    return micro_step, apply_step, eval_step
