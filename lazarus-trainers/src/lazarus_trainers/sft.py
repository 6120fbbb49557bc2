"""Supervised fine-tuning: masked next-token cross-entropy on the completion tokens.

The loss of a step is the mean cross-entropy over every completion token of the step (all
micro-batches, all ranks): :meth:`SFTTrainer.loss` returns the sum over the batch's target tokens
and their count, and the trainer base divides the summed gradients by the summed counts.
Prompt tokens (and padding) carry no loss unless ``mask_prompt`` is off.
"""

from __future__ import annotations

import attrs
import mlx.core as mx
import mlx.nn as nn

from lazarus.training.config import TrainingConfig, setting
from lazarus.training.trainer import Trainer


@attrs.define(kw_only=True)
class SFTConfig(TrainingConfig):
    """:class:`TrainingConfig` plus the SFT options."""

    mask_prompt: bool = setting(True, "Train only on completion tokens (off: the prompt carries loss too).")


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """``(sum of cross-entropy over positions where mask is 1, number of such positions)``.

    ``logits`` (B, T, V), ``targets`` (B, T) int, ``mask`` (B, T) of 0/1. Computed in float32.
    """
    per_token = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
    mask = mask.astype(mx.float32)
    return (per_token * mask).sum(), mask.sum()


class SFTTrainer(Trainer):
    """``lazarus train sft``: reads prompt/completion, chat or text JSONL."""

    name = "sft"
    config_class = SFTConfig
    config: SFTConfig  # (an instance of config_class)
    data_format = "sft"
    headline_metrics = ("loss",)
    loss_label = "cross-entropy loss (nats/token)"

    def batch_arrays(self, batch, training: bool = True) -> dict[str, mx.array]:
        # ids (B, T) and the loss mask (B, T): 1 where token t is a target predicted from ids[:t]
        return {"ids": mx.array(batch.ids), "loss_mask": mx.array(batch.loss_mask)}

    def loss(self, model, ids: mx.array, loss_mask: mx.array) -> tuple[mx.array, mx.array]:
        logits = model(ids[:, :-1])
        return masked_cross_entropy(logits, ids[:, 1:], loss_mask[:, 1:])
