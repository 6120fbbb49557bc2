"""Deterministic, resumable, shardable batching with length bucketing.

How one epoch's *global* batches are planned (a pure function of the seed, the epoch, the
example lengths and the batching settings, never of rank or world size):

1. shuffle the example indices with ``numpy.random.default_rng([seed, epoch])``;
2. cut the shuffled order into windows of ``sort_window`` examples and sort each window by length
   (stable), so batches hold similar lengths and little padding;
3. cut the result into batches: ``batch_size`` examples each, or as many as fit
   ``max_tokens_per_batch`` padded tokens (batch rows × longest length × sequences per example);
4. shuffle the order of the batches, so the epoch does not run from short to long.

Data parallelism: with ``world_size`` ranks, rank ``r`` gets rows ``r, r + W, r + 2W ...`` of every
global batch: the shards are disjoint and their union is the global batch. A global batch with
fewer examples than ranks is filled up on the short ranks with a copy of its first example whose
loss mask is all zero (``indices`` -1), so every rank runs the same number of steps and the loss
is unchanged.

Resuming: :class:`BatchPosition` ``(seed, epoch, index, fingerprint)`` says which global batch comes
next. Save ``iterator.position.as_dict()`` (JSON-ready) with a checkpoint and pass
``BatchPosition.from_dict(d)`` back as ``position=``: the iterator yields exactly the batches that
were still to come, on any number of ranks.

Arrays are numpy (``ids`` int32 (B, T), masks float32 (B, T), lengths int32 (B,)); convert with
``mx.array(batch.ids)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import attrs
import numpy as np

from lazarus.data.examples import Example, PreferenceExample, PromptExample, SFTExample, TokenizedDataset
from lazarus.errors import LazarusError


@attrs.frozen
class BatchPosition:
    """Where a :class:`BatchIterator` stands: the next batch is global batch ``index`` of ``epoch``.

    The shuffling RNG of an epoch is ``numpy.random.default_rng([seed, epoch])``, so ``seed`` and
    ``epoch`` are its complete state. ``fingerprint`` identifies the example lengths and batching
    settings; resuming with different data or settings raises LazarusError.
    """

    epoch: int = 0
    index: int = 0
    seed: int = 0
    fingerprint: str = ""

    def as_dict(self) -> dict:
        """JSON-ready form, for a checkpoint's trainer state."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BatchPosition:
        try:
            return cls(epoch=int(data["epoch"]), index=int(data["index"]), seed=int(data["seed"]),
                       fingerprint=str(data.get("fingerprint", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise LazarusError(f"invalid data position {data!r}: needs integer epoch, index and seed "
                               f"({exc})") from None


@attrs.frozen(eq=False)
class SFTBatch:
    """A padded batch of :class:`SFTExample` (right padding).

    ``ids`` (B, T) int32, ``loss_mask`` (B, T) float32 (0 on prompt, padding and filler rows),
    ``lengths`` (B,) int32 real lengths, ``indices`` (B,) int64 example indices (-1 for filler rows).
    """

    ids: np.ndarray
    loss_mask: np.ndarray
    lengths: np.ndarray
    indices: np.ndarray
    epoch: int = 0
    step: int = 0  #: index of this global batch within its epoch
    position: BatchPosition | None = None  #: where the iterator stands after this batch
    #: name -> (B,) array of the examples' ``extra`` values (a filler row has its example's)
    extra: dict = attrs.field(factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        """Targets that carry loss in this (local) batch, following the shifted-target convention."""
        return int(self.loss_mask[:, 1:].sum())


@attrs.frozen(eq=False)
class PreferenceBatch:
    """A padded batch of :class:`PreferenceExample`; chosen and rejected share one length T so a
    trainer can stack them into one (2B, T) forward pass."""

    chosen_ids: np.ndarray
    chosen_mask: np.ndarray
    chosen_lengths: np.ndarray
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray
    rejected_lengths: np.ndarray
    indices: np.ndarray
    epoch: int = 0
    step: int = 0
    position: BatchPosition | None = None

    def __len__(self) -> int:
        return int(self.chosen_ids.shape[0])


@attrs.frozen(eq=False)
class PromptBatch:
    """A batch of :class:`PromptExample` for RL: the examples themselves (generation pads its own
    way) and their indices. A filler row (index -1, only when a global batch has fewer prompts
    than ranks) repeats the batch's first prompt: generate for it if you must keep ranks in step,
    but give it no weight in the loss."""

    examples: tuple[PromptExample, ...]
    indices: np.ndarray
    epoch: int = 0
    step: int = 0
    position: BatchPosition | None = None

    def __len__(self) -> int:
        return len(self.examples)


Batch = SFTBatch | PreferenceBatch | PromptBatch


def _padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _pad(rows: Sequence[np.ndarray], width: int, value, dtype) -> np.ndarray:
    out = np.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


class BatchIterator:
    """Batches over tokenised examples: deterministic given ``seed``, resumable, shardable.

    ``examples``: a :class:`TokenizedDataset` or a sequence of one example type. Exactly one of
    ``batch_size`` (examples per *global* batch) or ``max_tokens_per_batch`` (padded tokens per
    global batch) is given. ``sort_window`` examples are length-sorted together (default
    ``32 × batch_size``, or 1024 with a token budget; 1 turns bucketing off). ``shuffle=False``
    keeps file order (for evaluation). ``drop_last`` leaves out a final global batch smaller than
    ``batch_size``. ``pad_id``: see :func:`lazarus.data.examples.pad_id_for`. ``pad_to_multiple``
    rounds T up (fewer distinct shapes). ``rank``/``world_size`` shard every global batch.

    Iterating yields batches forever, epoch after epoch (stop by step count); :meth:`epoch`
    yields the rest of the current epoch. :attr:`position` is where the next batch comes from.
    """

    def __init__(self, examples: TokenizedDataset | Sequence[Example], *, batch_size: int | None = None,
                 max_tokens_per_batch: int | None = None, seed: int = 0, shuffle: bool = True,
                 sort_window: int | None = None, drop_last: bool = False, pad_id: int = 0,
                 pad_to_multiple: int = 1, rank: int = 0, world_size: int = 1,
                 position: BatchPosition | None = None):
        self.examples = tuple(examples.examples if isinstance(examples, TokenizedDataset) else examples)
        if not self.examples:
            raise LazarusError("no examples to batch (the dataset is empty after tokenisation)")
        types = {type(e) for e in self.examples}
        if len(types) != 1:
            raise LazarusError(f"cannot batch a mix of {', '.join(sorted(t.__name__ for t in types))}")
        self.example_type = types.pop()
        if (batch_size is None) == (max_tokens_per_batch is None):
            raise LazarusError("give exactly one of batch_size or max_tokens_per_batch")
        if batch_size is not None and batch_size < 1:
            raise LazarusError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise LazarusError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if pad_to_multiple < 1:
            raise LazarusError(f"pad_to_multiple must be at least 1, got {pad_to_multiple}")
        self.lengths = np.array([e.length for e in self.examples], dtype=np.int64)
        self.sequences = self.example_type.num_sequences
        if max_tokens_per_batch is not None:
            longest = int(_padded_length(int(self.lengths.max()), pad_to_multiple) * self.sequences)
            if max_tokens_per_batch < longest:
                raise LazarusError(f"max_tokens_per_batch={max_tokens_per_batch} is smaller than the longest "
                                   f"example ({longest} tokens); raise it or lower max_seq_length")
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.seed = int(seed)
        self.shuffle = shuffle
        self.sort_window = max(1, sort_window if sort_window is not None else
                               (32 * batch_size if batch_size is not None else 1024))
        self.drop_last = drop_last
        self.pad_id = int(pad_id)
        self.pad_to_multiple = pad_to_multiple
        self.rank, self.world_size = rank, world_size
        self.fingerprint = self._fingerprint()
        self._plans: dict[int, list[np.ndarray]] = {}
        self.position = BatchPosition(0, 0, self.seed, self.fingerprint)
        if position is not None:
            self.seek(position)

    # -- planning --
    def _fingerprint(self) -> str:
        digest = hashlib.sha256(self.lengths.tobytes())
        digest.update(repr((self.example_type.__name__, self.batch_size, self.max_tokens_per_batch,
                            self.shuffle, self.sort_window, self.drop_last, self.pad_to_multiple)).encode())
        return digest.hexdigest()[:16]

    def _cost(self, rows: int, longest: int) -> int:
        return rows * _padded_length(longest, self.pad_to_multiple) * self.sequences

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch``: one int64 array of example indices per batch."""
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        count = len(self.examples)
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        if self.sort_window > 1:
            windows = [order[start:start + self.sort_window] for start in range(0, count, self.sort_window)]
            order = np.concatenate([w[np.argsort(self.lengths[w], kind="stable")] for w in windows])
        batches = self._cut(order)
        if self.drop_last and self.batch_size is not None and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        if not batches:
            raise LazarusError(f"no batches: {count} examples and drop_last with batch_size={self.batch_size}")
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plans = {epoch: batches}  # keep one epoch: plans are cheap to rebuild
        return batches

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if self.batch_size is not None:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        budget = self.max_tokens_per_batch
        assert budget is not None  # exactly one of batch_size and max_tokens_per_batch is given
        batches, start, longest = [], 0, 0
        for i, index in enumerate(order):
            longest_if_added = max(longest, int(self.lengths[index]))
            if i > start and self._cost(i - start + 1, longest_if_added) > budget:
                batches.append(order[start:i])
                start, longest_if_added = i, int(self.lengths[index])
            longest = longest_if_added
        batches.append(order[start:])
        return batches

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Global batches in ``epoch`` (default: the current one); fixed for ``batch_size``."""
        return len(self.plan(self.position.epoch if epoch is None else epoch))

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch; -1 marks a filler row (a zero-loss copy of row 0)."""
        local = indices[self.rank::self.world_size]
        if len(local) == 0:
            local = np.array([-1], dtype=np.int64)
        return local

    # -- position --
    def seek(self, position: BatchPosition) -> None:
        """Continue from ``position`` (as saved from :attr:`position`)."""
        if position.fingerprint and position.fingerprint != self.fingerprint:
            raise LazarusError("cannot resume: the data or the batching settings changed since the position "
                               f"was saved (fingerprint {position.fingerprint} != {self.fingerprint})")
        if position.seed != self.seed:
            raise LazarusError(f"cannot resume: the position was saved with seed {position.seed}, "
                               f"this iterator uses seed {self.seed}")
        if position.epoch < 0 or not 0 <= position.index <= self.batches_per_epoch(position.epoch):
            raise LazarusError(f"cannot resume: epoch {position.epoch} has no batch {position.index}")
        self.position = BatchPosition(position.epoch, position.index, self.seed, self.fingerprint)

    # -- iteration --
    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.epoch()

    def epoch(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; afterwards the position is the next epoch."""
        epoch = self.position.epoch
        plan = self.plan(epoch)
        while self.position.epoch == epoch and self.position.index < len(plan):
            step = self.position.index
            global_indices = plan[step]
            local = self.shard(global_indices)
            following = step + 1
            if following < len(plan):
                self.position = BatchPosition(epoch, following, self.seed, self.fingerprint)
            else:
                self.position = BatchPosition(epoch + 1, 0, self.seed, self.fingerprint)
            yield self.collate(local, global_indices, epoch, step)
        if self.position.epoch == epoch:  # an epoch that was entered at its end
            self.position = BatchPosition(epoch + 1, 0, self.seed, self.fingerprint)

    def collate(self, local: np.ndarray, global_indices: np.ndarray, epoch: int = 0, step: int = 0) -> Batch:
        """Pad the examples at ``local`` indices (-1 = filler copy of ``global_indices[0]``)."""
        real = [int(i) if i >= 0 else int(global_indices[0]) for i in local]
        examples = [self.examples[i] for i in real]
        filler = local < 0
        meta: dict[str, Any] = {"indices": np.asarray(local, dtype=np.int64), "epoch": epoch, "step": step,
                                "position": self.position}
        if self.example_type is PromptExample:
            return PromptBatch(examples=tuple(cast("list[PromptExample]", examples)), **meta)
        width = _padded_length(max(e.length for e in examples), self.pad_to_multiple)
        if self.example_type is SFTExample:
            sft = cast("list[SFTExample]", examples)
            mask = _pad([e.loss_mask for e in sft], width, 0, np.float32)
            mask[filler] = 0
            extra = {k: np.asarray([e.extra[k] for e in sft]) for k in sft[0].extra} if sft else {}
            return SFTBatch(ids=_pad([e.ids for e in sft], width, self.pad_id, np.int32),
                            loss_mask=mask, lengths=np.array([e.length for e in sft], dtype=np.int32),
                            extra=extra, **meta)
        assert self.example_type is PreferenceExample
        pairs = cast("list[PreferenceExample]", examples)
        chosen_mask = _pad([e.chosen_mask for e in pairs], width, 0, np.float32)
        rejected_mask = _pad([e.rejected_mask for e in pairs], width, 0, np.float32)
        chosen_mask[filler] = rejected_mask[filler] = 0
        return PreferenceBatch(
            chosen_ids=_pad([e.chosen_ids for e in pairs], width, self.pad_id, np.int32),
            chosen_mask=chosen_mask,
            chosen_lengths=np.array([len(e.chosen_ids) for e in pairs], dtype=np.int32),
            rejected_ids=_pad([e.rejected_ids for e in pairs], width, self.pad_id, np.int32),
            rejected_mask=rejected_mask,
            rejected_lengths=np.array([len(e.rejected_ids) for e in pairs], dtype=np.int32),
            **meta)
