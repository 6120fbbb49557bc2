"""Group relative policy optimisation (GRPO) and its variants: dr-grpo, bnpo, dapo, gspo.

Each optimizer step takes ``batch_size`` prompts (split over ranks), generates ``group_size``
completions for each in one batched, KV-cached pass (:func:`lazarus.training.rl.rollout`), scores
them with the ``--reward`` plugins, turns the rewards into group advantages and minimises the
clipped objective of ``--loss-type`` (formulas in :mod:`lazarus.training.rl` and docs/rl.md).
``--num-iterations`` > 1 reuses one batch of rollouts for that many optimizer steps, against the
log-probs the policy had when it generated them. ``--beta`` > 0 adds the k3 KL to the reference
(the policy with its adapter off, the starting ``--adapter``, or ``--ref-model``); 0 keeps none.

Each row of a rollout is seeded from (seed, step, micro-batch, prompt index, member of the group),
and checkpoints are only written once a batch of rollouts is used up, so a resumed run repeats the
straight run exactly. Under ``mlx.launch -n N`` each rank generates the groups of its share of the
prompts (whole groups, so a group's advantage is over the whole group); because a row's samples
depend on its own seed only, N ranks draw the rollouts one process would, and the run ends where a
single process with the same global batch does.

:class:`~lazarus_trainers.rollout.RolloutTrainer` (its own module) is the part shared with ``ppo``:
reward loading, the rollout buffer, completions logging and the per-window metrics.
"""

from __future__ import annotations

import time

import attrs
import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from lazarus.errors import LazarusError
from lazarus.training import rl
from lazarus.training.config import setting
from lazarus_trainers.rollout import (  # noqa: F401  (RolloutBatch, COMPLETIONS_FILE: where they were)
    COMPLETIONS_FILE,
    RolloutBatch,
    RolloutConfig,
    RolloutTrainer,
    _new_window,
)

#: rounds of regenerating zero-spread groups with --dynamic-sampling
RESAMPLE_ROUNDS = 3
#: rollout rows per loss/gradient evaluation (as mlx-lm-lora's GRPO micro-batches): bounds peak memory
LOSS_ROWS = 4


@attrs.define(kw_only=True)
class GRPOConfig(RolloutConfig):
    """:class:`RolloutConfig` plus the GRPO loss options."""

    loss_type: str = setting("grpo", "Normalisation of the loss: grpo (per sequence), dr-grpo (by max length), "
                                     "bnpo (per micro-batch token), dapo (per step token), gspo (sequence "
                                     "ratio).", choices=rl.LOSS_TYPES)
    scale_rewards: str = setting("group", "Divide advantages by the reward std of the group, of the batch, or "
                                          "not at all.", choices=rl.SCALE_REWARDS)
    dynamic_sampling: bool = setting(False, f"Regenerate groups whose rewards are all equal (up to "
                                            f"{RESAMPLE_ROUNDS} times), as DAPO does.")


class GRPOTrainer(RolloutTrainer):
    """``lazarus train grpo``: prompt JSONL (``prompt`` or ``messages`` plus fields for the rewards)."""

    name = "grpo"
    config_class = GRPOConfig
    config: GRPOConfig  # (an instance of config_class)

    def load_data(self) -> None:
        config = self.config
        if config.group_size < 2 and config.scale_rewards != "none":
            raise LazarusError(f"--group-size {config.group_size}: GRPO compares completions within a group; "
                               "use 2 or more")
        super().load_data()

    def resample(self, examples, ro, scores, real, step, micro, indices=None):
        """``--dynamic-sampling``: regenerate the groups whose rewards are all equal."""
        if not self.config.dynamic_sampling or ro.group_size < 2:
            return ro, scores, 0.0, 0.0
        from lazarus.rewards import Scores

        g = ro.group_size
        prompts = [list(map(int, ro.ids[i, :ro.prompt_lengths[i]])) for i in range(len(ro))]
        completion_ids, texts = list(ro.completion_ids), list(ro.completions)
        reasons = list(ro.finish_reasons)
        total = list(scores.total)
        by_reward = {k: list(v) for k, v in scores.by_reward.items()}
        gen_s = score_s = 0.0
        for round_ in range(RESAMPLE_ROUNDS):
            flat = np.asarray(total).reshape(-1, g)
            redo = [j for j in range(len(flat)) if real[j] and np.ptp(flat[j]) < 1e-9]
            if not redo:
                break
            start = time.perf_counter()
            sub_examples = [examples[j] for j in redo]
            again = micro * 1000 + round_ + 1
            sub = self.generate(sub_examples, self.sampling(step, again),
                                None if indices is None else self.row_seeds([indices[j] for j in redo], step, again))
            gen_s += time.perf_counter() - start
            start = time.perf_counter()
            sub_scores = self.score(sub_examples, sub)
            score_s += time.perf_counter() - start
            for n, j in enumerate(redo):
                new = np.asarray(sub_scores.total[n * g:(n + 1) * g])
                if np.ptp(new) < 1e-9:
                    continue
                for m in range(g):
                    row, src = j * g + m, n * g + m
                    completion_ids[row], texts[row] = sub.completion_ids[src], sub.completions[src]
                    reasons[row], total[row] = sub.finish_reasons[src], sub_scores.total[src]
                    for k in by_reward:
                        by_reward[k][row] = sub_scores.by_reward[k][src]
        merged = rl.assemble_rollout(prompts, completion_ids, texts, reasons, group_size=g, pad_id=self.pad_id,
                                     pad_to_multiple=self.pad_to_multiple, seconds=ro.seconds + gen_s)
        return merged, Scores(total=total, by_reward=by_reward), gen_s, score_s

    def score_rollout(self, ro, scores, weights) -> tuple[dict, dict]:
        config = self.config
        batch_std = None
        if config.scale_rewards == "batch":
            batch_std = self.batch_reward_std(np.asarray(scores.total, dtype=np.float64)[weights > 0])
        advantages, _ = rl.group_advantages(scores.total, ro.group_size, config.scale_rewards, batch_std)
        arrays = {"advantages": advantages}
        if config.num_iterations > 1:
            arrays["old_logprobs"] = self.policy_logprobs(ro.ids, ro.mask)
        if config.beta > 0:
            arrays["ref_logprobs"] = self.reference_logprobs(ro.ids, ro.mask)
        return arrays, {}

    def batch_reward_std(self, rewards: np.ndarray) -> float:
        """The unbiased std of the real rewards of all ranks (``--scale-rewards batch``), by two
        passes: the mean first, then the sums of the deviations from it. Ranks exchange float32
        sums, so the one-pass ``Σr² - n·mean²`` would lose the spread of rewards with a large
        offset (100 ± 0.05); the deviations are small numbers, and the ``(Σd)²/n`` term corrects
        for a mean that float32 rounded."""
        total, n = (float(v) for v in np.array(self.world.all_sum(
            mx.array([rewards.sum(), rewards.size], dtype=mx.float32))))
        if n < 2:
            return 0.0
        d = rewards - total / n
        sum_d, sum_dd = (float(v) for v in np.array(self.world.all_sum(
            mx.array([d.sum(), np.square(d).sum()], dtype=mx.float32))))
        return float(np.sqrt(max(sum_dd - sum_d * sum_d / n, 0.0) / (n - 1.0)))

    def batch_arrays(self, batch, training: bool = True) -> dict:
        ro, a = batch.rollout, batch.arrays
        shape = (ro.ids.shape[0], ro.ids.shape[1] - 1)
        zeros = np.zeros(shape, dtype=np.float32)
        return {"ids": mx.array(ro.ids), "mask": mx.array(ro.mask), "advantages": mx.array(a["advantages"]),
                "old_logprobs": mx.array(a.get("old_logprobs", zeros)),
                "ref_logprobs": mx.array(a.get("ref_logprobs", zeros)), "weights": mx.array(batch.weights)}

    def micro_step(self, step, batch) -> tuple:
        """The loss and gradients of a rollout batch, :data:`LOSS_ROWS` rows at a time (each part
        evaluated before the next): the backward pass keeps one part's activations, not the whole
        group's. The sums are those of the whole batch (``bnpo``, normalised per micro-batch, runs
        whole)."""
        arrays = self.batch_arrays(batch)
        rows = arrays["ids"].shape[0]
        if self.config.loss_type == "bnpo" or rows <= LOSS_ROWS:
            return step(arrays)
        summed = None
        for start in range(0, rows, LOSS_ROWS):
            part = step({name: a[start:start + LOSS_ROWS] for name, a in arrays.items()})
            summed = part if summed is None else tree_map(mx.add, summed, part)
            mx.eval(summed)
        assert summed is not None  # (rows > LOSS_ROWS: the loop ran)
        return summed

    def loss(self, model, ids, mask, advantages, old_logprobs, ref_logprobs, weights):
        from lazarus.training.reference import model_token_logprobs

        config = self.config
        logprobs = model_token_logprobs(model, ids)  # float32, the vocabulary projection in chunks
        if config.num_iterations == 1:
            old_logprobs = mx.stop_gradient(logprobs)  # on-policy: the ratio is 1, its gradient is not
        return rl.grpo_loss(logprobs, old_logprobs, ref_logprobs if config.beta > 0 else None, advantages,
                            mask[:, 1:], weights, loss_type=config.loss_type, epsilon=config.epsilon,
                            epsilon_high=config.epsilon_high, beta=config.beta,
                            max_completion_length=config.max_completion_length)
