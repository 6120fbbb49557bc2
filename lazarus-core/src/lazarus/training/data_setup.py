"""The data of a training run (part of :class:`~lazarus.training.trainer.Trainer`): records read and
tokenized, batches sharded by rank, the number of optimizer steps."""

from __future__ import annotations

import math

from lazarus.errors import LazarusError
from lazarus.training.parts import TrainerParts


class DataSetup(TrainerParts):
    """Training and validation examples and their batches; mixed into the trainer base."""

    def tokenize(self, dataset):
        """Records -> examples (default: :func:`lazarus.data.examples.tokenize` with the config)."""
        from lazarus.data.examples import tokenize

        return tokenize(dataset, self.tokenizer, max_seq_length=self.config.max_seq_length,
                        mask_prompt=getattr(self.config, "mask_prompt", True))

    def load_data(self) -> None:
        from lazarus.data.examples import pad_id_for
        from lazarus.data.records import load_splits

        config = self.config
        if not config.data:
            raise LazarusError("no data given: pass --data PATH (a JSONL file or a directory with train.jsonl)")
        splits = load_splits(config.data, format=self.data_format)
        self.train_examples = self.tokenize(splits.train)
        self.valid_examples = self.tokenize(splits.valid) if splits.valid is not None and len(splits.valid) else None
        if not len(self.train_examples):
            raise LazarusError(f"{config.data}: no training examples left after tokenisation "
                               f"(max_seq_length={config.max_seq_length})")
        self.pad_id = pad_id_for(self.tokenizer)
        if config.batch_size % self.world.size:
            raise LazarusError(f"--batch-size {config.batch_size} is the global batch and must divide evenly "
                               f"over {self.world.size} ranks")
        self.train_batches = self._iterator(self.train_examples, shuffle=True)

    def _iterator(self, examples, *, shuffle: bool):
        from lazarus.data.batching import BatchIterator

        return BatchIterator(examples, batch_size=self.config.batch_size, seed=self.config.seed,
                             shuffle=shuffle, pad_id=self.pad_id, pad_to_multiple=self.pad_to_multiple,
                             rank=self.world.rank, world_size=self.world.size)

    def total_steps(self) -> int:
        """Optimizer steps of the run: max_steps and/or epochs (whichever ends first)."""
        config = self.config
        candidates = []
        if config.max_steps:
            candidates.append(config.max_steps)
        if config.epochs:
            per_epoch = self.train_batches.batches_per_epoch(0)
            candidates.append(max(1, math.ceil(config.epochs * per_epoch / config.grad_accumulation)))
        return min(candidates) if candidates else config.DEFAULT_STEPS
