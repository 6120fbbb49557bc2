"""Online RL machinery shared by every RL trainer (grpo, ppo, expert training): rollouts,
advantages, KL and the clipped losses. One module, so that no trainer carries its own copy.

Rollouts (:func:`rollout`): each prompt is repeated ``group_size`` times and all of them are
generated in **one** batched, KV-cached pass (:func:`lazarus.generation.batch_generate`: left-padded,
masked; finished rows leave the batch). The result holds the token ids of prompt + completion per
row, right-padded, with a target mask that is 1 on the completion tokens (EOS included).

Conventions (as :func:`lazarus.training.reference.sequence_logprobs`): ``mask`` (B, T) marks
target tokens; per-token arrays (log-probs, KL, advantages, values) are (B, T-1), position ``t``
scoring token ``t + 1``, and are multiplied by ``mask[:, 1:]``.

Formulas (``r = exp(logp - logp_old)``, ``A`` the advantage, ``ε``/``ε_high`` the clip range,
``kl`` the k3 estimator below, ``|o_i|`` completion length, ``L`` max completion length):

- token loss ``ℓ_it = -min(r_it·A_i, clip(r_it, 1-ε, 1+ε_high)·A_i) + β·kl_it``
- ``grpo``: ``mean_i (1/|o_i|) Σ_t ℓ_it`` (each sequence's token mean, then the mean over sequences)
- ``bnpo``: ``Σ_it ℓ_it / Σ_i |o_i|`` within each micro-batch
- ``dr-grpo``: ``Σ_it ℓ_it / (N · L)`` (no length bias)
- ``dapo``: ``Σ_it ℓ_it / Σ_i |o_i|`` over the whole optimizer step (all micro-batches, all ranks)
- ``gspo``: sequence ratio ``s_i = exp(mean_t(logp_it - logp_old_it))``,
  ``ℓ_i = -min(s_i·A_i, clip(s_i, 1-ε, 1+ε_high)·A_i) + β·mean_t kl_it``, mean over sequences
- k3 KL: ``kl = exp(ref - logp) - (ref - logp) - 1`` (≥ 0, exactly 0 when policy = reference)
- group advantages: ``A_i = (R_i - mean_group R) / (std R + 1e-4)``, std over the group
  (``scale_rewards="group"``), the whole batch (``"batch"``) or not at all (``"none"``)
- GAE: ``δ_t = r_t + γ·V_{t+1} - V_t``, ``A_t = δ_t + γ·λ·A_{t+1}``, returns ``A_t + V_t``
- PPO whitening (TRL's ``masked_whiten``): ``(A - mean) · rsqrt(var + 1e-8)``, unbiased variance
- PPO: policy ``-min(r·A, clip(r, 1-ε, 1+ε_high)·A)``, value
  ``½·max((V - R)², (V_old + clip(V - V_old, ±ε_v) - R)²)``, minus ``c_ent`` × entropy
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import mlx.core as mx
import numpy as np

LOSS_TYPES = ("grpo", "dr-grpo", "bnpo", "dapo", "gspo")
SCALE_REWARDS = ("group", "batch", "none")
#: added to the std before dividing, as TRL does (zero-spread groups get advantage 0, not NaN)
STD_EPS = 1e-4


# -- rollouts ------------------------------------------------------------------------------------
@attrs.define
class Rollout:
    """``len(prompts) × group_size`` generated rows, row ``i`` answering prompt ``i // group_size``.

    ``ids`` (B, T) int32 prompt + completion, right-padded with ``pad_id``; ``mask`` (B, T) int8, 1
    on completion tokens; ``prompt_lengths``/``completion_lengths`` (B,); ``completions`` the
    decoded texts (EOS and stop strings left out); ``finish_reasons`` "stop" or "length";
    ``generated_tokens`` and ``seconds`` of the batched generation.
    """

    ids: np.ndarray
    mask: np.ndarray
    prompt_lengths: np.ndarray
    completion_lengths: np.ndarray
    completions: list[str]
    completion_ids: list[list[int]]
    finish_reasons: list[str]
    group_size: int
    generated_tokens: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.completions)


def rollout(model, tokenizer, prompts: Sequence[Sequence[int]], *, group_size: int = 1,
            max_completion_length: int = 256, sampling=None, pad_id: int = 0,
            pad_to_multiple: int = 8, row_seeds: Sequence[int] | None = None) -> Rollout:
    """Generate ``group_size`` completions for each prompt (token id lists) in one batched pass.

    ``sampling`` is a :class:`lazarus.generation.SamplingConfig` (its ``seed`` makes the rollout
    reproducible). ``row_seeds`` (``len(prompts) × group_size``, row order) seeds each row on its
    own instead, so a row draws the same completion in whatever batch (or on whatever rank) it is
    generated. The model runs in eval mode (no dropout) and without gradients.
    """
    import time

    from lazarus.generation import SamplingConfig, batch_generate

    rows = [list(map(int, p)) for p in prompts for _ in range(group_size)]
    training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        results = batch_generate(model, tokenizer, rows, max_tokens=max_completion_length,
                                 sampling=sampling or SamplingConfig(), row_seeds=row_seeds)
    finally:
        model.train(training)
    seconds = time.perf_counter() - start
    completion_ids = [list(r.token_ids) for r in results]
    return assemble_rollout(rows, completion_ids, [r.text for r in results], [r.finish_reason for r in results],
                     group_size=group_size, pad_id=pad_id, pad_to_multiple=pad_to_multiple, seconds=seconds)


def assemble_rollout(prompts: list[list[int]], completion_ids: list[list[int]], texts: list[str],
                     finish_reasons: list[str], *, group_size: int, pad_id: int = 0, pad_to_multiple: int = 8,
                     seconds: float = 0.0) -> Rollout:
    """A :class:`Rollout` from prompt and completion token lists (one row each)."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completion_ids, strict=True)]
    width = max(2, max(lengths))
    width = -(-width // pad_to_multiple) * pad_to_multiple
    ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=np.int8)
    for i, (p, c) in enumerate(zip(prompts, completion_ids, strict=True)):
        ids[i, :len(p) + len(c)] = p + c
        mask[i, len(p):len(p) + len(c)] = 1
    return Rollout(ids=ids, mask=mask, prompt_lengths=np.array([len(p) for p in prompts], dtype=np.int64),
                   completion_lengths=np.array([len(c) for c in completion_ids], dtype=np.int64),
                   completions=list(texts), completion_ids=completion_ids, finish_reasons=list(finish_reasons),
                   group_size=group_size, generated_tokens=sum(len(c) for c in completion_ids), seconds=seconds)


# -- advantages -------------------------------------------------------------------------------------
def group_advantages(rewards: Sequence[float], group_size: int, scale_rewards: str = "group",
                     batch_std: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Advantages ``(R - group mean) / (std + 1e-4)`` for rewards laid out group after group.

    ``scale_rewards``: ``group`` (std within each group), ``batch`` (std of all rewards; pass
    ``batch_std`` when the batch is spread over ranks) or ``none``. Stds are unbiased (n - 1), as
    in TRL. Returns ``(advantages (N,), zero_spread (N // group_size,) bool)``: a zero-spread group
    (all rewards equal) has advantage 0 everywhere and teaches nothing.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale_rewards!r}")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    zero_spread = np.ptp(r, axis=1) < 1e-9
    if scale_rewards == "group":
        std = r.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros((len(r), 1))
        centred = centred / (std + STD_EPS)
    elif scale_rewards == "batch":
        if batch_std is None:
            batch_std = float(r.std(ddof=1)) if r.size > 1 else 0.0
        centred = centred / (batch_std + STD_EPS)
    return centred.reshape(-1).astype(np.float32), zero_spread


def whiten(values: np.ndarray, mask: np.ndarray, shift_mean: bool = True, sum_over_ranks=None) -> np.ndarray:
    """PPO's advantage whitening, as TRL's ``masked_whiten``: ``(x - mean) · rsqrt(var + 1e-8)``
    with the mean and the *unbiased* variance (n - 1) over the masked entries (``shift_mean=False``
    adds the mean back). Computed in float64; masked-out entries become 0. A single masked entry
    (variance undefined) becomes 0. ``sum_over_ranks`` (a function: list of floats -> their sums
    over ranks, as ``World.sum_floats``) takes the mean and variance over every rank's entries, as
    one process holding the whole batch would."""
    m = np.asarray(mask).astype(bool)
    x = np.asarray(values, dtype=np.float64)
    selected = x[m]
    total, n = float(selected.sum()), float(selected.size)
    if sum_over_ranks is not None:
        total, n = sum_over_ranks([total, n])
    if n == 0:
        return np.zeros_like(values)
    mean = total / n
    squares = float(np.square(selected - mean).sum())
    if sum_over_ranks is not None:
        squares = sum_over_ranks([squares])[0]
    var = squares / (n - 1) if n > 1 else 0.0
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return np.where(m, out, 0.0).astype(values.dtype)


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the masked positions of each row.

    ``rewards``, ``values``, ``mask``: (B, T) per-token arrays; only positions where ``mask`` is 1
    are steps of the episode (a completion), the value after the last step is 0. Returns
    ``(advantages, returns)`` (B, T), zero where ``mask`` is 0.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = np.nonzero(m[b])[0]
        running, next_value = 0.0, 0.0
        for t in steps[::-1]:
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            advantages[b, t] = running
            next_value = values[b, t]
    returns = np.where(m, advantages + values, 0.0)
    return advantages.astype(np.float32), returns.astype(np.float32)


# -- KL and losses (mx, differentiable) ------------------------------------------------------------------
def k3_kl(logprobs: mx.array, ref_logprobs: mx.array) -> mx.array:
    """Per-token k3 estimate of KL(policy ‖ reference): ``exp(ref - logp) - (ref - logp) - 1``."""
    diff = ref_logprobs - logprobs
    return mx.exp(diff) - diff - 1.0


def grpo_loss(logprobs: mx.array, old_logprobs: mx.array, ref_logprobs: mx.array | None,
              advantages: mx.array, mask: mx.array, weights: mx.array | None = None, *,
              loss_type: str = "grpo", epsilon: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.0, max_completion_length: int = 256) -> tuple[mx.array, mx.array, dict]:
    """``(total, count, {metric: sum})`` of the clipped GRPO objective for one micro-batch.

    ``logprobs``/``old_logprobs``/``ref_logprobs``: (B, T') per-token log-probs of the completion
    tokens (``ref_logprobs`` None when ``beta`` is 0); ``advantages`` (B,); ``mask`` (B, T') 1 on
    completion tokens; ``weights`` (B,) 0 for rows that must not count (filler). ``total / count``
    is the loss as the module docstring gives it per ``loss_type``; the trainer base sums totals
    and counts over micro-batches and ranks before dividing (which is what makes ``dapo`` global).
    Metrics, as sums with their own counts (``NAME:count``, see :meth:`Trainer.loss`), so that the
    logged value is a mean over the whole logging window: ``kl`` (mean k3 per completion token)
    and ``clip_fraction`` (share of completion tokens where the clip binds: ``r < 1-ε`` with
    ``A < 0`` or ``r > 1+ε_high`` with ``A > 0``; for ``gspo`` the share of sequences).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.astype(mx.float32)
    if weights is not None:
        mask = mask * weights.astype(mx.float32)[:, None]
    rows = (mask.sum(axis=1) > 0).astype(mx.float32)  # sequences that count
    lengths = mx.maximum(mask.sum(axis=1), 1.0)
    adv = advantages.astype(mx.float32)[:, None]
    # masked before exp: padding positions (log-probs of whatever follows a completion) could overflow
    log_ratio = (logprobs - old_logprobs) * mask
    if loss_type == "gspo":
        log_ratio = ((log_ratio * mask).sum(axis=1) / lengths)[:, None]
        log_ratio = mx.broadcast_to(log_ratio, logprobs.shape)  # one ratio for every token of a row
    ratio = mx.exp(log_ratio)
    clipped = mx.clip(ratio, 1.0 - epsilon, 1.0 + high)
    per_token = -mx.minimum(ratio * adv, clipped * adv)
    is_clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + high) & (adv > 0))
    is_clipped = is_clipped.astype(mx.float32)
    if beta and ref_logprobs is not None:
        kl = k3_kl(logprobs * mask, ref_logprobs * mask)
        per_token = per_token + beta * kl
    else:
        kl = mx.zeros_like(per_token)

    def seq_mean(x):
        return (x * mask).sum(axis=1) / lengths

    if loss_type in ("grpo", "gspo"):
        total, count = (seq_mean(per_token) * rows).sum(), rows.sum()
    elif loss_type == "dr-grpo":
        total, count = (per_token * mask).sum() / max_completion_length, rows.sum()
    elif loss_type == "bnpo":
        tokens = mx.maximum(mask.sum(), 1.0)
        total, count = (per_token * mask).sum() / tokens * rows.sum(), rows.sum()
    else:  # dapo: normalised by every completion token of the step
        total, count = (per_token * mask).sum(), mask.sum()
    # the logged metrics are TRL's whatever the loss type: token means (gspo's clip_fraction: the
    # share of sequences, its ratio being one per sequence), each over its own count
    tokens = mask.sum()
    metrics = {"kl": (kl * mask).sum(), "kl:count": tokens}
    if loss_type == "gspo":
        metrics["clip_fraction"] = (is_clipped[:, 0] * rows).sum()
        metrics["clip_fraction:count"] = rows.sum()
    else:
        metrics["clip_fraction"] = (is_clipped * mask).sum()
        metrics["clip_fraction:count"] = tokens
    return total, count, metrics


def ppo_loss(logprobs: mx.array, old_logprobs: mx.array, advantages: mx.array, values: mx.array,
             old_values: mx.array, returns: mx.array, mask: mx.array, entropy: mx.array | None = None, *,
             epsilon: float = 0.2, epsilon_high: float | None = None, value_clip: float = 0.2,
             value_coef: float = 0.1, entropy_coef: float = 0.0) -> tuple[mx.array, mx.array, dict]:
    """``(total, count, {metric: sum})`` of PPO's clipped policy + value loss − entropy bonus, summed
    over the completion tokens (``count`` = tokens). All arrays (B, T'); ``mask`` 1 on completion
    tokens (0 also for rows that must not count). Metrics (token sums): ``policy_loss``,
    ``value_loss``, ``clip_fraction`` (tokens where the clip binds, i.e. the clipped term is the
    larger: TRL's ``pg_clipfrac``), ``approx_kl`` (``½(logp - logp_old)²``), ``entropy``."""
    high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.astype(mx.float32)
    ratio = mx.exp(logprobs - old_logprobs)
    unclipped = -ratio * advantages
    clipped = -mx.clip(ratio, 1.0 - epsilon, 1.0 + high) * advantages
    policy = mx.maximum(unclipped, clipped)
    values_clipped = old_values + mx.clip(values - old_values, -value_clip, value_clip)
    value = 0.5 * mx.maximum(mx.square(values - returns), mx.square(values_clipped - returns))
    per_token = policy + value_coef * value
    if entropy is not None and entropy_coef:
        per_token = per_token - entropy_coef * entropy
    is_clipped = (clipped > unclipped).astype(mx.float32)  # where the clip binds (TRL's pg_clipfrac)
    metrics = {"policy_loss": (policy * mask).sum(), "value_loss": (value * mask).sum(),
               "clip_fraction": (is_clipped * mask).sum(),
               "approx_kl": (0.5 * mx.square(logprobs - old_logprobs) * mask).sum()}
    if entropy is not None:
        metrics["entropy"] = (entropy * mask).sum()
    return (per_token * mask).sum(), mask.sum(), metrics


def token_entropy(logits: mx.array) -> mx.array:
    """Entropy of each position's next-token distribution, (B, T) from logits (B, T, V)."""
    logits = logits.astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(mx.exp(logp) * logp).sum(axis=-1)
