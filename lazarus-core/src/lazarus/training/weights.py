"""Weights I/O of a training run (part of :class:`~lazarus.training.trainer.Trainer`): the trained
weights through the checkpoint-format plugins, resumable checkpoints, the final output, and the
settings a checkpoint and ``lazarus.json`` keep (:func:`stored_config`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import cast

import attrs
import mlx.core as mx
from mlx.utils import tree_flatten

from lazarus.errors import LazarusError
from lazarus.training import checkpoint as ckpt
from lazarus.training.config import TrainingConfig
from lazarus.training.parts import TrainerParts


class WeightsIO(TrainerParts):
    """Writing and reading the trained weights and checkpoints; mixed into the trainer base."""

    def write_weights(self, directory: Path, *, step: int) -> None:
        """Write the trained weights into ``directory`` through the checkpoint-format plugins:
        ``mlx-lm`` for adapters, ``hf`` (whole model, Hugging Face layout) for a full fine-tune."""
        from lazarus import checkpoints
        from lazarus.adapters import adapter_weights

        if self.full_fine_tune:
            checkpoints.save("hf", directory, model=self.model, source=self.config.model,
                             config=self.model_config if isinstance(self.model_config, dict) else None,
                             provenance=self.provenance(step))
        else:
            assert self.adapter_config is not None  # apply_adapter() set it
            checkpoints.save("mlx-lm", directory, weights=adapter_weights(self.model, self.adapter_config),
                             config=self._adapter_config_for_disk(), model=self.model,
                             provenance=self.provenance(step))

    def _adapter_config_for_disk(self):
        # mlx-lm keeps its training options in adapter_config.json; we record ours the same way
        stored = stored_config(self.config)
        extra = {"trainer": self.name, "model": stored["model"], "data": stored["data"],
                 "seed": self.config.seed, "learning_rate": self.config.learning_rate,
                 "batch_size": self.config.batch_size}
        assert self.adapter_config is not None  # apply_adapter() set it
        return attrs.evolve(self.adapter_config, extra={**self.adapter_config.extra, **extra})

    def read_weights(self, checkpoint: Path) -> None:
        """Load the trained weights saved in a checkpoint directory into the (adapted) model."""
        from lazarus import checkpoints

        expected = dict(tree_flatten(self.model.trainable_parameters()))
        if self.full_fine_tune:
            saved_model, _, _ = checkpoints.load("hf", checkpoint)
            saved = cast("list[tuple[str, mx.array]]", tree_flatten(saved_model.parameters()))
            weights = {k: v for k, v in saved if k in expected}
        else:
            weights = checkpoints.load("mlx-lm", checkpoint).weights
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise LazarusError(f"{checkpoint}: the checkpoint lacks {missing[0]} (and {len(missing) - 1} "
                               "more); it was written with other adapter settings than this run's")
        for key, value in weights.items():
            if key in expected and tuple(value.shape) != tuple(expected[key].shape):
                raise LazarusError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, this run expects "
                                   f"{tuple(expected[key].shape)}; resume with the settings it was saved with")
        self.model.load_weights([(k, v) for k, v in weights.items() if k in expected], strict=False)

    def provenance(self, step: int) -> dict:
        """Extra ``lazarus.json`` fields of a checkpoint: trainer, step, settings, hashed data files."""
        data_files = []
        if self.config.data:
            data = Path(self.config.data)
            data_files = [data] if data.is_file() else sorted(
                p for p in (data / "train.jsonl", data / "valid.jsonl") if p.is_file())
        return {"trainer": self.name, "step": step, "training": stored_config(self.config),
                "data_files": data_files}

    def save_checkpoint(self, step: int, counters: dict) -> Path:
        """Write a resumable checkpoint for ``step`` (rank 0 writes; every rank waits for it)."""
        self._guard_weights(step)
        target = self.output / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(step)
        rng_per_rank = self.world.all_gather_ints(ckpt.rng_state())
        if self.world.is_main:
            state = {
                "step": step,
                "trainer": self.name,
                "config": {**stored_config(self.config), "resume": None, "overwrite": False},
                "data_position": self.train_batches.position.as_dict(),
                "rng": ckpt.rng_state(),
                "rng_per_rank": rng_per_rank,
                "counters": counters,
                "world_size": self.world.size,
            }
            optimizer_state = dict(tree_flatten(self.optimizer.state))
            target = ckpt.save_checkpoint(self.output, step, write_weights=lambda d: self.write_weights(d, step=step),
                                          optimizer_state=optimizer_state, state=state,
                                          keep=self.config.keep_checkpoints)
        self.world.barrier()
        return target

    def save_final(self, step: int) -> None:
        """Write the trained adapter (or full model) into the output directory itself, so that
        ``--adapter-path OUTPUT`` works in Lazarus and mlx-lm alike."""
        if self.world.is_main:
            self.write_weights(self.output, step=step)
        self.world.barrier()

    def resume_command(self, checkpoint: Path) -> str:
        launcher = f"mlx.launch -n {self.world.size} -- " if self.world.distributed else ""
        return f"{launcher}lazarus train {self.name} --resume {shlex.quote(str(checkpoint))}"


def stored_config(config: TrainingConfig) -> dict:
    """The config as a checkpoint and ``lazarus.json`` keep it: paths that exist (``--model``,
    ``--data``, ``--output`` ... fields shown as PATH/DIR/FILE) made absolute, so a resumed run finds
    them from any working directory."""
    values = config.to_dict()
    for field in attrs.fields(type(config)):
        value = values.get(field.name)
        if field.metadata.get("metavar") not in ("PATH", "DIR", "FILE") or not isinstance(value, str):
            continue
        if value and not value.startswith("lazarus:") and Path(value).expanduser().exists():
            values[field.name] = str(Path(value).expanduser().absolute())
    return values
