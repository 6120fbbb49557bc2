"""Odds-ratio preference optimisation (ORPO; Hong et al. 2024): no reference model.

With ``p_c``, ``p_r`` the policy's log-probabilities of the chosen and rejected answers averaged
over their tokens, and ``odds(p) = p − log(1 − e^p)`` (log-odds), the loss of a pair is

    ``NLL_c − λ · log σ(odds(p_c) − odds(p_r))``

where ``NLL_c = −p_c`` is the SFT loss on the chosen answer (mean cross-entropy over its tokens)
and ``λ`` is ``--beta``, as in TRL. Logged like DPO, with ``rewards/* = λ · p`` (TRL's choice),
plus ``nll_loss`` and ``log_odds_ratio``.
"""

from __future__ import annotations

import attrs
import mlx.core as mx
import mlx.nn as nn

from lazarus.training.config import TrainingConfig, setting
from lazarus_trainers.dpo import PreferenceTrainer, pair_metrics


@attrs.define(kw_only=True)
class ORPOConfig(TrainingConfig):
    """:class:`TrainingConfig` plus ORPO's weight of the odds-ratio term."""

    beta: float = setting(0.1, "λ: weight of the odds-ratio term next to the SFT loss on the chosen answer.",
                          minimum=0.0)


def log_odds(mean_logp: mx.array) -> mx.array:
    """``log(p / (1 − p))`` from ``log p`` (elementwise), stable as ``p → 1``."""
    mean_logp = mx.minimum(mean_logp, -1e-6)  # p = 1 exactly would make the odds infinite
    return mean_logp - mx.log1p(-mx.exp(mean_logp))


def orpo_losses(chosen: mx.array, rejected: mx.array, beta: float) -> tuple[mx.array, mx.array, mx.array]:
    """Per-pair ORPO losses (B,), the NLL part and the log-odds-ratio term, from per-token-averaged
    log-probs of the chosen and rejected answers (B,) each."""
    ratio = nn.log_sigmoid(log_odds(chosen) - log_odds(rejected))
    nll = -chosen
    return nll - beta * ratio, nll, ratio


class ORPOTrainer(PreferenceTrainer):
    """``lazarus train orpo``: SFT on the chosen answer plus an odds-ratio preference term."""

    name = "orpo"
    config_class = ORPOConfig

    def batch_arrays(self, batch, training: bool = True) -> tuple:
        return self.stacked(batch)

    def loss(self, model, ids, mask, weight):
        beta = self.config.beta
        chosen, rejected, _ = self.policy_logps(model, ids, mask, average=True)
        losses, nll, ratio = orpo_losses(chosen, rejected, beta)
        c, r = mx.stop_gradient(chosen), mx.stop_gradient(rejected)
        metrics = pair_metrics(beta * c, beta * r, c, r, weight)
        metrics["nll_loss"] = (mx.stop_gradient(nll) * weight).sum()
        metrics["log_odds_ratio"] = (mx.stop_gradient(ratio) * weight).sum()
        return (losses * weight).sum(), weight.sum(), metrics
