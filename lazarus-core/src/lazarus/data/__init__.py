"""Training data: JSONL records, tokenised examples with loss masks, batching, a math generator.

Typical use by a trainer::

    from lazarus.data import load_splits, tokenize, BatchIterator, pad_id_for

    splits = load_splits("data/", format="sft")          # train / valid / test Datasets
    train = tokenize(splits.train, tokenizer, max_seq_length=512)
    batches = BatchIterator(train, batch_size=8, seed=0, pad_id=pad_id_for(tokenizer),
                            rank=rank, world_size=world_size)
    for batch in batches:                               # forever; stop by step count
        ...                                             # batch.ids, batch.loss_mask, batch.lengths
        state["data_position"] = batches.position.as_dict()

Modules: :mod:`~lazarus.data.records` (reading JSONL), :mod:`~lazarus.data.examples`
(tokenisation and masks), :mod:`~lazarus.data.batching` (batches, resume, sharding),
:mod:`~lazarus.data.math` (arithmetic data and :func:`~lazarus.data.math.extract_answer`).
Names below are imported on first use, so ``import lazarus.data`` does not import numpy.
"""

from __future__ import annotations

import importlib

_LAZY = {
    # records
    "CompletionRecord": "records", "ChatRecord": "records", "TextRecord": "records",
    "PreferenceRecord": "records", "PromptRecord": "records", "Dataset": "records",
    "DataSplits": "records", "read_jsonl": "records", "read_dataset": "records",
    "load_splits": "records", "detect_kind": "records", "write_jsonl": "records",
    "FORMATS": "records",
    # examples
    "SFTExample": "examples", "PreferenceExample": "examples", "PromptExample": "examples",
    "TokenizedDataset": "examples", "tokenize": "examples", "tokenize_sft": "examples",
    "tokenize_preference": "examples", "tokenize_prompts": "examples", "pad_id_for": "examples",
    # batching
    "BatchIterator": "batching", "BatchPosition": "batching", "SFTBatch": "batching",
    "PreferenceBatch": "batching", "PromptBatch": "batching",
    # math
    "extract_answer": "math",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"lazarus.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lazarus.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
