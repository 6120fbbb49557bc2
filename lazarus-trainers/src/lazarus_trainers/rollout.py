"""The machinery the online RL trainers (``grpo``, ``ppo``) share: :class:`RolloutConfig` (rollout,
reward, KL and clipping options), :class:`RolloutBatch` (one micro-batch of scored rollouts) and
:class:`RolloutTrainer`: reward loading, the rollout buffer (``--num-iterations`` reuses one batch
of rollouts), seeding each row from (seed, step, micro-batch, prompt, member of the group),
completions logging and the per-window reward / length / timing metrics.

A subclass implements :meth:`RolloutTrainer.score_rollout` (a scored rollout -> the loss inputs
and the rollout's own metric sums), :meth:`~lazarus.training.trainer.Trainer.batch_arrays` and
:meth:`~lazarus.training.trainer.Trainer.loss`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import attrs
import mlx.core as mx
import numpy as np

from lazarus.training import rl
from lazarus.training.config import TrainingConfig, setting
from lazarus.training.trainer import Trainer

if TYPE_CHECKING:
    from lazarus.rewards import Scores

COMPLETIONS_FILE = "completions.jsonl"
#: the weighted reward at which a rollout counts towards ``accuracy``
ACCURATE_REWARD = 1.0


@attrs.define(kw_only=True)
class RolloutConfig(TrainingConfig):
    """Options shared by the online RL trainers (rollouts, rewards, KL, clipping)."""

    #: default peak learning rates: small steps, since every step trains on the policy's own samples
    LEARNING_RATES = {"lora": 2e-5, "dora": 2e-5, "full": 1e-6}

    reward: tuple[str, ...] | None = setting(
        None, "Reward function NAME or NAME:WEIGHT (repeat the option, or separate with commas); "
              "installed ones: `lazarus plugins list --hook reward_functions`.", metavar="NAME[:W]", many=True)
    group_size: int = setting(4, "Completions generated per prompt (the group of GRPO).", minimum=1)
    max_completion_length: int = setting(256, "Most tokens generated per completion.", minimum=1)
    temperature: float = setting(1.0, "Sampling temperature of the rollouts (0: greedy).", minimum=0.0)
    top_p: float = setting(1.0, "Nucleus sampling of the rollouts (1: off).", minimum=0.0, maximum=1.0)
    top_k: int = setting(0, "Top-k sampling of the rollouts (0: off).", minimum=0)
    min_p: float = setting(0.0, "Min-p sampling of the rollouts (0: off).", minimum=0.0, maximum=1.0)
    beta: float = setting(0.04, "Weight of the KL to the reference model (0: no reference is kept).", minimum=0.0)
    ref_model: str | None = setting(None, "Reference model directory (default: the policy without its trained "
                                          "adapter, or the starting --adapter).", metavar="DIR")
    epsilon: float = setting(0.2, "Lower clip range of the probability ratio: 1 - epsilon.", minimum=0.0)
    epsilon_high: float | None = setting(None, "Upper clip range: 1 + epsilon_high (default: epsilon; DAPO "
                                               "uses 0.28).", minimum=0.0)
    num_iterations: int = setting(1, "Optimizer steps per batch of rollouts (old log-probs are kept).", minimum=1)
    log_completions: int = setting(0, "Write this many sample completions per step, with their rewards, to "
                                      "OUTPUT/completions.jsonl.", minimum=0)


@attrs.define(eq=False)
class RolloutBatch:
    """One micro-batch of scored rollouts, as the loss consumes it."""

    rollout: rl.Rollout
    arrays: dict  #: name -> np.ndarray, the loss inputs besides ids and mask
    weights: np.ndarray  #: 1 for real rows, 0 for filler rows (ranks kept in step)
    examples: tuple
    scores: Scores | None = None  #: the rewards of the rollout's rows
    #: sums over the real rows of trainer-specific metrics (``return`` ...), logged as means per row
    extra_metrics: dict = attrs.Factory(dict)

    @property
    def lengths(self) -> np.ndarray:
        return self.rollout.prompt_lengths + self.rollout.completion_lengths

    @property
    def indices(self) -> np.ndarray:
        return np.where(self.weights > 0, 0, -1)


class RolloutTrainer(Trainer):
    """Shared machinery of the online RL trainers; subclasses implement :meth:`score_rollout`
    (rewards -> loss inputs) and :meth:`loss`."""

    data_format = "prompt"
    config_class = RolloutConfig
    config: RolloutConfig  # (an instance of config_class)
    #: the loss of an on-policy step is ~0 by construction; the rewards say whether it learns
    headline_metrics = ("reward_mean", "accuracy")

    # -- set-up ----------------------------------------------------------------------------------
    def load_data(self) -> None:
        from lazarus.rewards import load_rewards

        self.rewards = load_rewards(self.config.reward or ())
        super().load_data()
        from lazarus.rewards import check_applies

        check_applies(self.rewards, [e.record for e in self.train_examples], str(self.config.data))
        from lazarus.training.trainer import generation_bytes

        c = self.config
        rows = max(1, c.batch_size // self.world.size) * c.group_size
        longest = max((len(e.prompt_ids) for e in self.train_examples), default=1)
        self.check_memory(generation_bytes(self.model, rows, longest + c.max_completion_length),
                          f"generating {rows} completions at once ({c.batch_size} prompts x --group-size "
                          f"{c.group_size}, up to {longest} + {c.max_completion_length} tokens)",
                          "--group-size, --batch-size or --max-completion-length")
        if self.valid_examples is not None:
            self.log("The validation prompts are not scored during training; measure them with "
                     f"`lazarus eval --data {self.config.data}/valid.jsonl --reward ...`")
            self.valid_examples = None
        self._buffer: list[RolloutBatch] = []
        self._uses = self.config.num_iterations  # the first step generates
        self._fresh: bool | None = None
        self._window = _new_window()

    def setup(self) -> None:
        from lazarus.training.reference import ReferenceModel

        config = self.config
        self.reference = ReferenceModel.for_trainer(self, config.ref_model, needed=config.beta > 0)
        self.log(f"Reference model: {self.reference.describe()}; rewards: "
                 f"{', '.join(r.label for r in self.rewards)}; {config.batch_size} prompts × {config.group_size} "
                 f"completions per micro-batch")
        if self.world.is_main and not config.resume:
            (self.output / COMPLETIONS_FILE).unlink(missing_ok=True)

    def total_steps(self) -> int:
        config = self.config
        candidates = [config.max_steps] if config.max_steps else []
        if config.epochs:
            per_epoch = self.train_batches.batches_per_epoch(0)
            candidates.append(max(1, -(-config.epochs * per_epoch * config.num_iterations // config.grad_accumulation)))
        return min(candidates) if candidates else config.DEFAULT_STEPS

    # -- rollouts --------------------------------------------------------------------------------
    def next_batch(self, batches, step: int, micro: int):
        if micro == 0:
            fresh, self._fresh = self.rollouts_used_up(), None
            self._buffer, self._uses = ([], 1) if fresh else (self._buffer, self._uses + 1)
        if len(self._buffer) <= micro:
            self._buffer.append(self.make_rollout(next(batches), step, micro))
        batch = self._buffer[micro]
        self._account_rewards(batch)  # every step reports the rewards it trains on
        return batch

    def stop_reusing(self) -> bool:
        """Whether to generate afresh before ``num_iterations`` is reached (PPO's target KL)."""
        return False

    def rollouts_used_up(self) -> bool:
        """Whether the next step generates new rollouts (decided once per step, so that asking
        before a checkpoint and stepping afterwards agree)."""
        if self._fresh is None:
            self._fresh = self._uses >= self.config.num_iterations or self.stop_reusing()
        return self._fresh

    def can_checkpoint(self) -> bool:
        return self.rollouts_used_up()

    def sampling(self, step: int, micro: int):
        from lazarus.generation import SamplingConfig

        c = self.config
        seed = int(np.random.SeedSequence([c.seed, step, micro]).generate_state(1)[0] >> 1)
        return SamplingConfig(temperature=c.temperature, top_p=c.top_p, top_k=c.top_k, min_p=c.min_p, seed=seed)

    def row_seeds(self, indices, step: int, micro: int) -> list[int]:
        """One seed per rollout row, from (run seed, step, micro-batch, prompt index, member of the
        group): a resumed run, or a rank generating its share, draws the rows a single process does."""
        c = self.config
        return [int(np.random.SeedSequence([c.seed, step, micro, int(i) + 1, j]).generate_state(1)[0] >> 1)
                for i in indices for j in range(c.group_size)]

    def generate(self, examples, sampling, row_seeds=None) -> rl.Rollout:
        return rl.rollout(self.model, self.tokenizer, [e.prompt_ids for e in examples],
                          group_size=self.config.group_size, max_completion_length=self.config.max_completion_length,
                          sampling=sampling, pad_id=self.pad_id, pad_to_multiple=self.pad_to_multiple,
                          row_seeds=row_seeds)

    def score(self, examples, ro: rl.Rollout):
        """The rewards of every row of a rollout (:class:`lazarus.rewards.Scores`)."""
        from lazarus.rewards import score

        g = ro.group_size
        prompts = [examples[i // g].record.prompt for i in range(len(ro))]
        records = [{**examples[i // g].record.extra, "completion_ids": ro.completion_ids[i]} for i in range(len(ro))]
        sources = [examples[i // g].record.source for i in range(len(ro))]
        return score(self.rewards, prompts, ro.completions, records, sources)

    def make_rollout(self, batch, step: int, micro: int) -> RolloutBatch:
        examples = tuple(batch.examples)
        indices = np.asarray(batch.indices)
        real = indices >= 0
        start = time.perf_counter()
        ro = self.generate(examples, self.sampling(step, micro), self.row_seeds(indices, step, micro))
        generated = time.perf_counter() - start
        start = time.perf_counter()
        scores = self.score(examples, ro)
        scored = time.perf_counter() - start
        ro, scores, extra_gen, extra_score = self.resample(examples, ro, scores, real, step, micro, indices)
        weights = np.repeat(real.astype(np.float32), ro.group_size)
        start = time.perf_counter()
        arrays, metrics = self.score_rollout(ro, scores, weights)
        scored += time.perf_counter() - start + extra_score
        self._account_generation(ro, weights, generated + extra_gen, scored)
        if micro == 0 and self.config.log_completions and self.world.is_main:
            self._log_completions(step + 1, examples, ro, scores, arrays)
        return RolloutBatch(ro, arrays, weights, examples, scores, extra_metrics=metrics)

    def resample(self, examples, ro, scores, real, step, micro, indices=None):
        """Regenerate some groups before scoring is final (GRPO's dynamic sampling); default none."""
        return ro, scores, 0.0, 0.0

    def score_rollout(self, ro: rl.Rollout, scores, weights: np.ndarray) -> tuple[dict, dict]:
        """``(arrays, metrics)`` of a scored rollout: the loss inputs (numpy arrays keyed by name) and
        sums over its real rows of trainer-specific metrics (``return`` ...; logged as means per row)."""
        raise NotImplementedError

    def policy_logprobs(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-token log-probs (B, T-1) of the current policy, no gradient, eval mode."""
        from lazarus.training.reference import frozen_sequence_logprobs

        _, per_token = frozen_sequence_logprobs(self.model, mx.array(ids), mx.array(mask))
        return np.array(per_token)

    def reference_logprobs(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        _, per_token = self.reference.sequence_logprobs(mx.array(ids), mx.array(mask))
        return np.array(per_token)

    # -- metrics ---------------------------------------------------------------------------------
    def _account_generation(self, ro, weights, generated: float, scored: float) -> None:
        w = self._window
        w["generated_tokens"] += int(ro.completion_lengths[weights > 0].sum())
        w["seconds_generation"] += generated
        w["seconds_scoring"] += scored

    def _account_rewards(self, batch: RolloutBatch) -> None:
        w, ro, scores = self._window, batch.rollout, batch.scores
        assert scores is not None  # (next_batch scores every batch)
        real = batch.weights > 0
        totals = np.asarray(scores.total, dtype=np.float64)[real]
        w["reward_sum"] += float(totals.sum())
        w["rewards"].extend(totals.tolist())  # for the two-pass reward_std of the window
        w["rows"] += int(real.sum())
        for name, values in scores.by_reward.items():
            present = [v for v, r in zip(values, real, strict=True) if r and v is not None]
            w["by_reward"][name] = w["by_reward"].get(name, 0.0) + float(sum(present))
            w["by_reward_rows"][name] = w["by_reward_rows"].get(name, 0) + len(present)
        lengths = ro.completion_lengths[real]
        w["length_sum"] += float(lengths.sum())
        w["length_max"] = max(w["length_max"], int(lengths.max()) if lengths.size else 0)
        groups = np.asarray(scores.total, dtype=np.float64).reshape(-1, ro.group_size)[real[::ro.group_size]]
        w["groups"] += len(groups)
        w["zero_spread"] += int((np.ptp(groups, axis=1) < 1e-9).sum()) if ro.group_size > 1 else 0
        # a completion is correct when its weighted reward reaches 1 (as `lazarus eval --success 1`)
        w["extra"]["accuracy"] = w["extra"].get("accuracy", 0.0) + float((totals >= ACCURATE_REWARD).sum())
        for name, value in batch.extra_metrics.items():
            w["extra"][name] = w["extra"].get(name, 0.0) + value

    def extra_metrics(self) -> dict:
        w, self._window = self._window, _new_window()
        names = [r.name for r in self.rewards]  # the same vector on every rank
        local = [w["reward_sum"], w["rows"], w["length_sum"], w["groups"], w["zero_spread"],
                 w["generated_tokens"], w["seconds_generation"], w["seconds_scoring"],
                 *[w["by_reward"].get(n, 0.0) for n in names], *[w["by_reward_rows"].get(n, 0) for n in names],
                 *[v for v in w["extra"].values()]]
        summed = np.array(self.world.all_sum(mx.array(local, dtype=mx.float32))).tolist() \
            if self.world.distributed else local
        (reward_sum, rows, length_sum, groups, zero_spread, generated, gen_s, score_s) = summed[:8]
        k = len(names)
        by_sum, by_rows, extra = summed[8:8 + k], summed[8 + k:8 + 2 * k], summed[8 + 2 * k:]
        length_max = max(max(v) for v in self.world.all_gather_ints([w["length_max"]]))
        rows = max(rows, 1.0)
        mean = reward_sum / rows
        reward_std = self._window_reward_std(w["rewards"], mean, rows)
        ranks = self.world.size
        gen_s, score_s = gen_s / ranks, score_s / ranks  # per-rank seconds (ranks run side by side)
        window_seconds = self.window_seconds if self.window_seconds is not None else gen_s + score_s
        row = {
            "reward_mean": mean,
            "reward_std": reward_std,
            **{f"reward/{n}": s / r for n, s, r in zip(names, by_sum, by_rows, strict=True) if r},
            "completion_length_mean": length_sum / rows,
            "completion_length_max": length_max,
            "zero_spread_fraction": zero_spread / max(groups, 1.0),
            "seconds_generation": gen_s,
            "seconds_scoring": score_s,
            "seconds_update": max(window_seconds - gen_s - score_s, 0.0),
            "rollout_tokens_per_second": generated / gen_s if gen_s > 0 else 0.0,
        }
        row.update({name: value / rows for name, value in zip(w["extra"], extra, strict=True)})
        return row

    def _window_reward_std(self, rewards: list, mean: float, rows: float) -> float:
        """Unbiased std of every real reward of the window, all ranks (TRL's ``reward_std``), in
        two passes: the deviations from the mean are small numbers, so rewards with a large
        offset (100 ± 0.05) keep their spread through float32 sums over ranks; ``(Σd)²/n``
        corrects for the rounding of the mean."""
        d = np.asarray(rewards, dtype=np.float64) - mean
        sums = [float(d.sum()), float(np.square(d).sum())]
        if self.world.distributed:
            sums = np.array(self.world.all_sum(mx.array(sums, dtype=mx.float32))).tolist()
        sum_d, sum_dd = sums
        return float(np.sqrt(max(sum_dd - sum_d * sum_d / rows, 0.0) / (rows - 1.0))) if rows > 1 else 0.0

    def _log_completions(self, step: int, examples, ro, scores, arrays) -> None:
        g = ro.group_size
        rows = []
        for i in range(min(self.config.log_completions, len(ro))):
            row = {"step": step, "prompt": examples[i // g].record.prompt, "completion": ro.completions[i],
                   "reward": scores.total[i], **{f"reward/{k}": v[i] for k, v in scores.by_reward.items()},
                   "completion_tokens": int(ro.completion_lengths[i]), "finish_reason": ro.finish_reasons[i]}
            if "advantages" in arrays and arrays["advantages"].ndim == 1:
                row["advantage"] = float(arrays["advantages"][i])
            rows.append(row)
        self.output.mkdir(parents=True, exist_ok=True)
        with (self.output / COMPLETIONS_FILE).open("a") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _new_window() -> dict:
    return {"reward_sum": 0.0, "rewards": [], "rows": 0, "by_reward": {}, "by_reward_rows": {},
            "length_sum": 0.0, "length_max": 0, "groups": 0, "zero_spread": 0, "generated_tokens": 0,
            "seconds_generation": 0.0, "seconds_scoring": 0.0, "extra": {}}
