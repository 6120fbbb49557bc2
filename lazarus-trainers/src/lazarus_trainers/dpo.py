"""Direct preference optimisation (DPO); the shared pairwise machinery is :mod:`lazarus_trainers.preference`.

Each pair is a prompt with a ``chosen`` and a ``rejected`` answer. With ``π`` the policy's and
``ρ`` the reference's summed log-probability of an answer (answer tokens only, given the prompt),
``h = (π_c − ρ_c) − (π_r − ρ_r)`` and ``ε`` the label smoothing, the loss of a pair is (as in TRL):

- ``sigmoid``: ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``  (DPO; ε > 0 is conservative DPO, cDPO,
  as TRL ≤ 0.19; TRL 1.x's sigmoid ignores ε)
- ``ipo``:     ``(h − 1/(2β))²`` with log-probs averaged over the answer's tokens
- ``hinge``:   ``max(0, 1 − β·h)``  (SLiC)
- ``robust``:  ``((1−ε)·(−log σ(β·h)) + ε·log σ(−β·h)) / (1 − 2ε)``  (unbiased under label noise ε)

Logged (TRL 1.16's definitions, for every loss type, ipo included): ``rewards/chosen =
β·(π_c − ρ_c)`` with *summed* log-probs, ``rewards/rejected``, ``rewards/margin`` (their
difference), ``rewards/accuracy`` (share of pairs with margin > 0), ``logps/chosen`` and
``logps/rejected`` (summed). See :mod:`lazarus.training.reference` for which model the reference is.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import attrs
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from lazarus.training.config import TrainingConfig, setting
from lazarus.training.reference import ReferenceModel
from lazarus_trainers.preference import PreferenceTrainer, pair_metrics  # noqa: F401  (importable from here too)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
#: where precomputed reference log-probs are cached, inside the run's output directory
REFERENCE_CACHE_DIR = "reference_logps"


@attrs.define(kw_only=True)
class DPOConfig(TrainingConfig):
    """:class:`TrainingConfig` plus the DPO options (TRL's names)."""

    #: default peak learning rates: a preference loss pulls harder than SFT on the same weights
    LEARNING_RATES = {"lora": 5e-5, "dora": 5e-5, "full": 1e-6}

    beta: float = setting(0.1, "Strength of the pull towards the reference (DPO β; IPO's τ).", minimum=0.0)
    loss_type: str = setting("sigmoid", "Preference loss: sigmoid (DPO), ipo, hinge or robust.",
                             choices=LOSS_TYPES)
    label_smoothing: float = setting(0.0, "Assumed share of flipped labels ε (0 ≤ ε < 0.5): robust, and "
                                          "sigmoid as conservative DPO (cDPO; TRL ≤ 0.19 does the same, "
                                          "TRL ≥ 1.0's sigmoid ignores it).", minimum=0.0)
    ref_model: str | None = setting(None, "Reference model directory (default: the policy with its adapter "
                                          "switched off, or the --adapter it starts from).", metavar="DIR")
    precompute_ref: bool = setting(False, "Compute the reference log-probs once before training, cache them "
                                          "in OUTPUT/reference_logps/ and free the reference model.")

    def __attrs_post_init__(self):
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.loss_type in ("ipo", "hinge") and self.beta <= 0:
            raise ValueError(f"beta must be > 0 for the {self.loss_type} loss, got {self.beta!r}")


# -- the losses, on per-pair log-probs -------------------------------------------------------------
def preference_losses(policy_chosen: mx.array, policy_rejected: mx.array, ref_chosen: mx.array,
                      ref_rejected: mx.array, *, beta: float, loss_type: str = "sigmoid",
                      label_smoothing: float = 0.0) -> mx.array:
    """Per-pair DPO-family losses (B,) from per-pair log-probs (B,) each (see the module docstring).

    For ``ipo`` pass log-probs averaged over answer tokens, as TRL does.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * nn.log_sigmoid(beta * h) - eps * nn.log_sigmoid(-beta * h)
    if loss_type == "robust":
        return ((1 - eps) * -nn.log_sigmoid(beta * h) + eps * nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
    if loss_type == "hinge":
        return mx.maximum(1 - beta * h, 0.0)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")


class DPOTrainer(PreferenceTrainer):
    """``lazarus train dpo``: direct preference optimisation against a reference model."""

    name = "dpo"
    config_class = DPOConfig
    config: DPOConfig  # (an instance of config_class)

    def load(self) -> None:
        super().load()
        # built before any resumed weights are read, so a starting adapter is kept as it was loaded
        self.reference = ReferenceModel.for_trainer(self, self.config.ref_model)
        self.ref_tables: dict[str, np.ndarray] | None = None

    def setup(self) -> None:
        self.log(f"Reference: {self.reference.describe()}")
        if self.config.precompute_ref:
            self.ref_tables = self._precomputed_reference()
            self.reference.release()

    @property
    def average_logps(self) -> bool:
        return self.config.loss_type == "ipo"

    # -- reference log-probs -------------------------------------------------------------------
    def _reference_logps(self, ids: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
        """The reference's per-pair log-probs (averaged over answer tokens for ipo), no gradient."""
        sums, _ = self.reference.sequence_logprobs(ids, mask)
        if self.average_logps:
            sums = sums / mx.maximum(mask[:, 1:].astype(mx.float32).sum(axis=-1), 1.0)
        half = ids.shape[0] // 2
        return sums[:half], sums[half:]

    def _cache_key(self) -> str:
        from lazarus.provenance import sha256_file, sha256_json

        model = self.model
        source = getattr(model, "source", None)
        files = list(source.weight_files) if source is not None else []
        adapter = self.config.adapter
        if adapter and Path(adapter, "adapters.safetensors").is_file():
            files.append(Path(adapter, "adapters.safetensors"))
        data = self.provenance(0)["data_files"]
        return sha256_json({
            "weights": [sha256_file(f) for f in files],
            "data": [sha256_file(f) for f in data],
            "reference": self.reference.kind, "ref_model": self.config.ref_model,
            "ref_weights": [sha256_file(f) for f in sorted(Path(self.config.ref_model).glob("*.safetensors"))]
            if self.config.ref_model else [],
            "max_seq_length": self.config.max_seq_length, "dtype": self.config.dtype,
            "fine_tune_type": self.config.fine_tune_type, "num_layers": self.config.num_layers,
        })[:16]

    def _precomputed_reference(self) -> dict[str, np.ndarray]:
        """Reference log-probs of every train (and valid) pair, from the cache when its key (model,
        adapter, reference and data hashes) matches, else computed once and cached."""
        path = self.output / REFERENCE_CACHE_DIR / f"{self._cache_key()}.safetensors"
        if path.is_file():
            saved = cast("dict[str, mx.array]", mx.load(str(path)))  # (safetensors: a dict)
            tables = {k: np.array(v) for k, v in saved.items()}
            if tables["train_chosen"].shape[0] == len(self.train_examples):
                self.log(f"Reference log-probs: read from {path}")
                return tables
        tables = {}
        for split, examples in (("train", self.train_examples), ("valid", self.valid_examples)):
            if examples is None:
                continue
            tables[f"{split}_chosen"], tables[f"{split}_rejected"] = self._reference_table(examples, split)
        if self.world.is_main:
            from lazarus.io import atomic_path

            with atomic_path(path, suffix=".safetensors") as tmp:
                mx.save_safetensors(str(tmp), {k: mx.array(v) for k, v in tables.items()})
            self.log(f"Reference log-probs: computed for {sum(len(v) for k, v in tables.items() if 'chosen' in k)} "
                     f"pairs and cached in {path}")
        self.world.barrier()
        return tables

    def _reference_table(self, examples, split: str) -> tuple[np.ndarray, np.ndarray]:
        from rich.progress import Progress

        chosen = np.zeros(len(examples), dtype=np.float32)
        rejected = np.zeros(len(examples), dtype=np.float32)
        iterator = self._iterator(examples, shuffle=False)
        with Progress(console=self.console, disable=not self.show_progress, transient=True) as progress:
            task = progress.add_task(f"reference log-probs ({split})", total=iterator.batches_per_epoch(0))
            for batch in iterator.epoch():
                ids, mask, _ = self.stacked(batch)
                c, r = self._reference_logps(ids, mask)
                real = batch.indices >= 0
                chosen[batch.indices[real]] = np.array(c)[real]
                rejected[batch.indices[real]] = np.array(r)[real]
                progress.advance(task)
        if self.world.distributed:  # each rank scored its own rows
            chosen, rejected = (np.array(a) for a in self.world.all_sum((mx.array(chosen), mx.array(rejected))))
        return chosen, rejected

    # -- the step ------------------------------------------------------------------------------
    def batch_arrays(self, batch, training: bool = True) -> dict:
        ids, mask, weight = self.stacked(batch)
        if self.ref_tables is not None:
            split = "train" if training else "valid"
            index = np.where(batch.indices >= 0, batch.indices, 0)
            ref_c = mx.array(self.ref_tables[f"{split}_chosen"][index])
            ref_r = mx.array(self.ref_tables[f"{split}_rejected"][index])
        else:
            ref_c, ref_r = self._reference_logps(ids, mask)
        return {"ids": ids, "mask": mask, "ref_chosen": ref_c, "ref_rejected": ref_r, "weight": weight}

    def loss(self, model, ids, mask, ref_chosen, ref_rejected, weight):
        config = self.config
        chosen, rejected, counts = self.policy_logps(model, ids, mask, average=self.average_logps)
        losses = preference_losses(chosen, rejected, ref_chosen, ref_rejected, beta=config.beta,
                                   loss_type=config.loss_type, label_smoothing=config.label_smoothing)
        chosen, rejected = mx.stop_gradient(chosen), mx.stop_gradient(rejected)
        if self.average_logps:  # ipo averaged for its loss; the logged rewards use sums, as TRL 1.16
            half = ids.shape[0] // 2
            tokens = mx.maximum(counts, 1.0)
            chosen, ref_chosen = chosen * tokens[:half], ref_chosen * tokens[:half]
            rejected, ref_rejected = rejected * tokens[half:], ref_rejected * tokens[half:]
        chosen_rewards = config.beta * (chosen - ref_chosen)
        rejected_rewards = config.beta * (rejected - ref_rejected)
        metrics = pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected, weight)
        return (losses * weight).sum(), weight.sum(), metrics
