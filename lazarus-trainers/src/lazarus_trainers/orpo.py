"""Odds-ratio preference optimisation (ORPO; Hong et al. 2024): no reference model.

With ``p_c``, ``p_r`` the policy's log-probabilities of the chosen and rejected answers averaged
over their tokens, and ``odds(p) = p − log(1 − e^p)`` (log-odds), the loss of an optimizer step is

    ``NLL − λ · mean_pairs log σ(odds(p_c) − odds(p_r))``

where ``λ`` is ``--beta`` and ``NLL`` is the SFT term of the paper: the cross-entropy of the
chosen *answer* tokens, as a token mean over every chosen answer token of the step (all
micro-batches and ranks, like the sft trainer's loss), so it does not depend on how the step is
split into micro-batches. (An evaluation batch uses its own token mean.)

How this relates to TRL (``experimental/orpo``, 1.16): the odds-ratio term and the logged
``rewards/* = λ · p``, ``logps/*``, ``log_odds_ratio`` (mean of ``log σ``) and ``log_odds_chosen``
(mean log-odds difference) are the same. TRL's NLL is the token mean over the prompt *and* answer
tokens of each micro-batch (its ``nll_loss`` also scores the prompt); ours leaves the prompt out,
as the paper's ``L_SFT`` on the chosen response does, and is the step's token mean. ``log(1 − e^p)``
is computed as the stable ``log1mexp`` (as TRL 1.16), so mean log-probs near 0 keep their precision.
"""

from __future__ import annotations

import math

import attrs
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.training.config import TrainingConfig, setting
from lazarus.training.reference import sequence_logprobs
from lazarus_trainers.preference import PreferenceTrainer, pair_metrics

#: log(1 - e^x) switches formula here (Mächler 2012): below, log1p(-e^x); above, log(-expm1(x))
LOG_HALF = -math.log(2.0)
#: mean log-probs are capped just below 0: p = 1 exactly has infinite odds
MAX_MEAN_LOGP = -1e-30


@attrs.define(kw_only=True)
class ORPOConfig(TrainingConfig):
    """:class:`TrainingConfig` plus ORPO's weight of the odds-ratio term."""

    #: default peak learning rates, as DPO's
    LEARNING_RATES = {"lora": 5e-5, "dora": 5e-5, "full": 1e-6}

    beta: float = setting(0.1, "λ: weight of the odds-ratio term next to the SFT loss on the chosen answer.",
                          minimum=0.0)


def log1mexp(x: mx.array) -> mx.array:
    """``log(1 − e^x)`` for ``x < 0``, accurate over the whole range (float32 included)."""
    x = mx.minimum(x, MAX_MEAN_LOGP)
    near = mx.maximum(x, LOG_HALF)  # each branch only sees inputs where it is accurate and finite,
    far = mx.minimum(x, LOG_HALF)  # so the unused branch of `where` puts no NaN in the gradient
    return mx.where(x > LOG_HALF, mx.log(-mx.expm1(near)), mx.log1p(-mx.exp(far)))


def log_odds(mean_logp: mx.array) -> mx.array:
    """``log(p / (1 − p))`` from ``log p`` (elementwise), stable as ``p → 1``."""
    return mx.minimum(mean_logp, MAX_MEAN_LOGP) - log1mexp(mean_logp)


def odds_ratio_terms(chosen: mx.array, rejected: mx.array) -> tuple[mx.array, mx.array]:
    """``(log σ(odds(p_c) − odds(p_r)), odds(p_c) − odds(p_r))`` per pair (B,) from the
    per-token-averaged log-probs of the chosen and rejected answers (B,) each."""
    difference = log_odds(chosen) - log_odds(rejected)
    return nn.log_sigmoid(difference), difference


class ORPOTrainer(PreferenceTrainer):
    """``lazarus train orpo``: SFT on the chosen answer plus an odds-ratio preference term."""

    name = "orpo"
    config_class = ORPOConfig
    config: ORPOConfig  # (an instance of config_class)

    def next_batch(self, batches, step: int, micro: int):
        """The step's micro-batches are drawn together, so that the NLL term can be the token mean
        of the whole step: ``pairs / tokens`` of all of them (all ranks) scales each one's sum."""
        if micro == 0:
            self._step_batches = [next(batches) for _ in range(self.config.grad_accumulation)]
            counts = np.sum([self._pairs_and_tokens(b) for b in self._step_batches], axis=0)
            pairs, tokens = (float(v) for v in np.array(self.world.all_sum(mx.array(counts, dtype=mx.float32))))
            self._nll_scales = {id(b): pairs / max(tokens, 1.0) for b in self._step_batches}
        return self._step_batches[micro]

    @staticmethod
    def _pairs_and_tokens(batch) -> tuple[float, float]:
        """Real pairs and their chosen answer tokens in a batch (filler rows have empty masks)."""
        real = batch.indices >= 0
        return float(real.sum()), float(batch.chosen_mask[real, 1:].sum())

    def batch_arrays(self, batch, training: bool = True) -> dict:
        ids, mask, weight = self.stacked(batch)
        scales = getattr(self, "_nll_scales", {}) if training else {}
        scale = scales.get(id(batch))
        if scale is None:  # a batch on its own (evaluation): its own token mean
            pairs, tokens = self._pairs_and_tokens(batch)
            scale = pairs / max(tokens, 1.0)
        return {"ids": ids, "mask": mask, "weight": weight, "nll_scale": mx.array(scale, dtype=mx.float32)}

    def loss(self, model, ids, mask, weight, nll_scale):
        """``(total, pairs, metrics)``: ``total / pairs`` over a step is the loss of the module
        docstring, ``nll_scale`` (``pairs / chosen tokens`` of the step) turning the summed NLL of
        this micro-batch into its share of the step's token mean."""
        beta = self.config.beta
        sums, _ = sequence_logprobs(model, ids, mask)
        counts = mask[:, 1:].astype(mx.float32).sum(axis=-1)
        means = sums / mx.maximum(counts, 1.0)
        half = ids.shape[0] // 2
        chosen, rejected = means[:half], means[half:]
        ratio, difference = odds_ratio_terms(chosen, rejected)
        total = ((-nll_scale * sums[:half] - beta * ratio) * weight).sum()  # filler rows: weight 0
        c, r = mx.stop_gradient(chosen), mx.stop_gradient(rejected)
        metrics = pair_metrics(beta * c, beta * r, c, r, weight)
        metrics["nll_loss"] = -(mx.stop_gradient(sums[:half]) * weight).sum()
        metrics["nll_loss:count"] = (counts[:half] * weight).sum()
        metrics["log_odds_ratio"] = (mx.stop_gradient(ratio) * weight).sum()
        metrics["log_odds_chosen"] = (mx.stop_gradient(difference) * weight).sum()
        return total, weight.sum(), metrics
