"""Proximal policy optimisation (PPO) with a value head, for language models.

A linear value head reads the policy's final-normed hidden state at every position
(``ln_final.hook_normalized``): ``V_t`` estimates the return after token ``t`` was generated. Each
rollout batch (one completion per prompt by default; ``--group-size`` for more) is scored by the
``--reward`` plugins; the reward comes at the last completion token and every token pays a KL
penalty ``-β·(logp - logp_ref)``. GAE (``--gamma``, ``--lam``) turns rewards and values into
advantages (whitened over the batch) and returns; the loss is the clipped policy loss plus
``--value-coef`` × the clipped value loss minus ``--entropy-coef`` × the entropy, per completion
token. ``--num-iterations`` optimizer steps reuse one rollout batch, stopping early once the
approximate KL between the current and the rollout policy passes ``--target-kl``.

The value head is saved next to the adapter as ``value_head.safetensors`` (keys
``value_head.weight``, ``value_head.bias``); :func:`load_value_head` puts it back on a model.
mlx-lm loads the adapter directory and ignores the file.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import cast

import attrs
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.errors import LazarusError
from lazarus.training import rl
from lazarus.training.config import setting
from lazarus_trainers.rollout import RolloutConfig, RolloutTrainer

VALUE_HEAD_FILE = "value_head.safetensors"
HIDDEN_HOOK = "ln_final.hook_normalized"


@attrs.define(kw_only=True)
class PPOConfig(RolloutConfig):
    """:class:`RolloutConfig` plus PPO's value, GAE and early-stop options."""

    group_size: int = setting(1, "Completions generated per prompt.", minimum=1)
    beta: float = setting(0.05, "Per-token KL penalty in the reward, -beta * (logp - logp_ref) "
                                "(0: no reference is kept).", minimum=0.0)
    num_iterations: int = setting(4, "Optimizer steps (PPO epochs) per batch of rollouts.", minimum=1)
    gamma: float = setting(1.0, "Discount of later rewards in GAE.", minimum=0.0)
    lam: float = setting(0.95, "GAE lambda: bias/variance trade-off of the advantage.", minimum=0.0)
    value_coef: float = setting(0.1, "Weight of the value loss.", minimum=0.0)
    value_clip: float = setting(0.2, "Clip range of the value update around the rollout's values.", minimum=0.0)
    entropy_coef: float = setting(0.0, "Weight of the entropy bonus (subtracted from the loss).", minimum=0.0)
    target_kl: float | None = setting(None, "Stop reusing a rollout batch once the approximate KL to the "
                                            "rollout policy exceeds this (default: never).", minimum=0.0)
    whiten_advantages: bool = setting(True, "Normalise advantages to mean 0, std 1 over each rollout batch.")


def add_value_head(model: nn.Module, seed: int = 0) -> nn.Linear:
    """Attach a fresh value head (hidden -> 1; small weights, zero bias) as ``model.value_head``."""
    hidden = model.args.hidden_size
    head = nn.Linear(hidden, 1)
    key = mx.random.key(seed)
    head.weight = mx.random.normal((1, hidden), key=key) * (1.0 / (hidden + 1)) ** 0.5 * 0.1
    head.bias = mx.zeros((1,))
    model.value_head = head
    return head


def load_value_head(model: nn.Module, directory: str | Path) -> nn.Linear:
    """Attach the value head saved in ``directory`` (a PPO output or checkpoint) to ``model``."""
    path = Path(directory) / VALUE_HEAD_FILE
    if not path.is_file():
        raise LazarusError(f"{directory}: no {VALUE_HEAD_FILE}; is it the output of `lazarus train ppo`?")
    weights = cast("dict[str, mx.array]", mx.load(str(path)))  # (safetensors: a dict)
    expected = (1, model.args.hidden_size)
    if tuple(weights.get("value_head.weight", mx.zeros((0,))).shape) != expected:
        raise LazarusError(f"{path}: value_head.weight should have shape {expected} for this model")
    head = add_value_head(model)
    head.load_weights([(k.removeprefix("value_head."), v) for k, v in weights.items()])
    return head


def values_and_logits(model: nn.Module, ids: mx.array) -> tuple[mx.array, mx.array]:
    """``(values (B, T), logits (B, T, V))`` of the policy with its value head."""
    logits, cache = model.run_with_cache(ids, names=[HIDDEN_HOOK])
    values = model.value_head(cache[HIDDEN_HOOK].astype(mx.float32)).squeeze(-1)
    return values, logits


class PPOTrainer(RolloutTrainer):
    """``lazarus train ppo``: prompt JSONL (``prompt`` or ``messages`` plus fields for the rewards)."""

    name = "ppo"
    config_class = PPOConfig
    config: PPOConfig  # (an instance of config_class)

    # -- the value head travels with the adapter --------------------------------------------------
    def apply_adapter(self) -> None:
        super().apply_adapter()
        add_value_head(self.model, seed=self.config.seed)
        self._count_trainable()

    @contextmanager
    def _without_value_head(self):
        head = self.model.pop("value_head")
        try:
            yield head
        finally:
            self.model.value_head = head

    def write_weights(self, directory: Path, *, step: int) -> None:
        from mlx.utils import tree_flatten

        with self._without_value_head() as head:
            super().write_weights(directory, step=step)
        weights = {f"value_head.{k}": v for k, v in cast("list[tuple[str, mx.array]]", tree_flatten(head.parameters()))}
        mx.save_safetensors(str(Path(directory) / VALUE_HEAD_FILE), weights)

    def read_weights(self, checkpoint: Path) -> None:
        with self._without_value_head():
            super().read_weights(checkpoint)
        load_value_head(self.model, checkpoint)
        self._count_trainable()

    # -- rollouts ---------------------------------------------------------------------------------
    def stop_reusing(self) -> bool:
        """Target-KL early stop: mean ``½(logp - logp_old)²`` over the buffered rollouts, all ranks."""
        target = self.config.target_kl
        if target is None or not self._buffer:
            return False
        total = count = 0.0
        for batch in self._buffer:
            ro = batch.rollout
            now = self.policy_logprobs(ro.ids, ro.mask)
            mask = ro.mask[:, 1:] * batch.weights[:, None]
            total += float((0.5 * np.square(now - batch.arrays["old_logprobs"]) * mask).sum())
            count += float(mask.sum())
        total, count = (float(v) for v in np.array(self.world.all_sum(mx.array([total, count]))))
        stop = total / max(count, 1.0) > target
        if stop:
            self._early_stops = getattr(self, "_early_stops", 0) + 1
        return stop

    def score_rollout(self, ro, scores, weights) -> tuple[dict, dict]:
        config = self.config
        ids, mask = mx.array(ro.ids), ro.mask[:, 1:].astype(np.float32)
        training = self.model.training
        self.model.eval()
        try:
            values, logits = values_and_logits(self.model, ids[:, :-1])
            from lazarus.training.reference import token_logprobs

            logprobs = token_logprobs(logits, ids[:, 1:])
            mx.eval(values, logprobs)
        finally:
            self.model.train(training)
        old_logprobs = np.array(logprobs) * mask
        old_values = np.array(values) * mask
        if config.beta > 0:
            ref = self.reference_logprobs(ro.ids, ro.mask)
            kl = (old_logprobs - ref) * mask
        else:
            kl = np.zeros_like(old_logprobs)
        rewards = -config.beta * kl
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # each row's last completion token
        rows = np.nonzero(mask.sum(axis=1) > 0)[0]
        rewards[rows, last[rows]] += np.asarray(scores.total, dtype=np.float32)[rows]
        advantages, returns = rl.gae(rewards, old_values, mask, config.gamma, config.lam)
        live = mask * weights[:, None]
        if config.whiten_advantages:  # over the whole batch: every rank's rows
            advantages = rl.whiten(advantages, live,
                                   sum_over_ranks=self.world.sum_floats if self.world.distributed else None)
        real = weights > 0
        arrays = {"advantages": advantages.astype(np.float32), "returns": returns.astype(np.float32),
                  "old_logprobs": old_logprobs.astype(np.float32), "old_values": old_values.astype(np.float32)}
        metrics = {"return": float((rewards * mask).sum(axis=1)[real].sum()),
                   "kl": float(((np.exp(-kl) + kl - 1.0) * mask).sum(axis=1)[real].sum() if config.beta > 0 else 0.0),
                   "value_mean": float((old_values.sum(axis=1) / np.maximum(mask.sum(axis=1), 1))[real].sum())}
        return arrays, metrics

    def extra_metrics(self) -> dict:
        row = super().extra_metrics()
        row["early_stops"] = getattr(self, "_early_stops", 0)
        return row

    def batch_arrays(self, batch, training: bool = True) -> dict:
        ro, a = batch.rollout, batch.arrays
        live = ro.mask.astype(np.float32) * batch.weights[:, None]
        return {"ids": mx.array(ro.ids), "mask": mx.array(live), "advantages": mx.array(a["advantages"]),
                "returns": mx.array(a["returns"]), "old_logprobs": mx.array(a["old_logprobs"]),
                "old_values": mx.array(a["old_values"])}

    def loss(self, model, ids, mask, advantages, returns, old_logprobs, old_values):
        from lazarus.training.reference import token_logprobs

        config = self.config
        values, logits = values_and_logits(model, ids[:, :-1])
        logprobs = token_logprobs(logits, ids[:, 1:])
        entropy = rl.token_entropy(logits) if config.entropy_coef else None
        return rl.ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns, mask[:, 1:], entropy,
                           epsilon=config.epsilon, epsilon_high=config.epsilon_high, value_clip=config.value_clip,
                           value_coef=config.value_coef, entropy_coef=config.entropy_coef)
