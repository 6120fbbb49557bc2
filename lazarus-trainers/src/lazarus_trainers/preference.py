"""The shared machinery of the pairwise preference trainers (``dpo``, ``orpo``): reading and
checking ``{prompt, chosen, rejected}`` pairs, running chosen and rejected through the policy in
one stacked forward pass, and the logged pair metrics (TRL's definitions, see
:mod:`lazarus_trainers.dpo`)."""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np

from lazarus.errors import LazarusError
from lazarus.training.reference import sequence_logprobs
from lazarus.training.trainer import Trainer


def pair_metrics(chosen_rewards: mx.array, rejected_rewards: mx.array, policy_chosen: mx.array,
                 policy_rejected: mx.array, weight: mx.array) -> dict[str, mx.array]:
    """The logged preference metrics as sums over the real pairs (``weight`` 1) of a batch."""
    margin = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": (chosen_rewards * weight).sum(),
        "rewards/rejected": (rejected_rewards * weight).sum(),
        "rewards/margin": (margin * weight).sum(),
        "rewards/accuracy": ((margin > 0).astype(mx.float32) * weight).sum(),
        "logps/chosen": (policy_chosen * weight).sum(),
        "logps/rejected": (policy_rejected * weight).sum(),
    }


class PreferenceTrainer(Trainer):
    """Base of the pairwise trainers: reads ``{prompt, chosen, rejected}`` JSONL, runs chosen and
    rejected through the policy in one stacked forward pass, and checks the pairs."""

    data_format = "preference"
    headline_metrics = ("rewards/accuracy", "rewards/margin")

    def tokenize(self, dataset):
        from lazarus.data.examples import tokenize_preference

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below with file and line
            examples = tokenize_preference(dataset, self.tokenizer, max_seq_length=self.config.max_seq_length)
        self._check_pairs(dataset, examples)
        return examples

    def _check_pairs(self, dataset, examples) -> None:
        """Warn about pairs that teach nothing (chosen == rejected) and pairs cut to fit
        max_seq_length; refuse a file where every pair is identical."""
        where = dataset.path or "data"
        same = [e for e in examples if np.array_equal(e.chosen_ids, e.rejected_ids)]
        if same and len(same) == len(examples):
            raise LazarusError(f"{where}: in every pair 'chosen' equals 'rejected'; a preference trainer "
                               "needs pairs that differ")
        if same:
            first = dataset.records[same[0].record_index].source
            self.log(f"[yellow]{where}: {len(same)} of {len(examples)} pairs have chosen == rejected "
                     f"(first at {first}); they carry no preference signal[/]")
        cut = [e for e in examples if e.truncated]
        if cut or examples.num_dropped:
            first = dataset.records[cut[0].record_index].source if cut else None
            parts = []
            if cut:
                parts.append(f"{len(cut)} pairs had their answers cut to fit --max-seq-length "
                             f"{self.config.max_seq_length} (the prompt is kept whole; first at {first})")
            if examples.num_dropped:
                parts.append(f"{examples.num_dropped} pairs were left out because the prompt alone fills "
                             "--max-seq-length")
            self.log(f"[yellow]{where}: {'; '.join(parts)}[/]")
        if not len(examples):
            raise LazarusError(f"{where}: no pairs left: every prompt is at least --max-seq-length "
                               f"{self.config.max_seq_length} tokens; raise --max-seq-length")

    def batch_tokens(self, batch) -> int:
        real = batch.indices >= 0
        return int(batch.chosen_lengths[real].sum() + batch.rejected_lengths[real].sum())

    @staticmethod
    def stacked(batch) -> tuple[mx.array, mx.array, mx.array]:
        """``(ids (2B, T), target mask (2B, T), real-pair weight (B,))``: chosen rows then rejected."""
        ids = mx.array(np.concatenate([batch.chosen_ids, batch.rejected_ids]))
        mask = mx.array(np.concatenate([batch.chosen_mask, batch.rejected_mask]))
        weight = mx.array((batch.indices >= 0).astype(np.float32))
        return ids, mask, weight

    @staticmethod
    def policy_logps(model, ids: mx.array, mask: mx.array, average: bool = False):
        """Per-pair log-probs of the chosen and rejected answers, summed (or averaged over their
        tokens), and the answer token counts ``(chosen, rejected, counts (2B,))``."""
        sums, _ = sequence_logprobs(model, ids, mask)
        counts = mask[:, 1:].astype(mx.float32).sum(axis=-1)
        if average:
            sums = sums / mx.maximum(counts, 1.0)
        half = ids.shape[0] // 2
        return sums[:half], sums[half:], counts
