"""The trainer base shared by every trainer plugin.

- :mod:`lazarus.training.config`: :class:`TrainingConfig` and the schema -> CLI options / config files
- :mod:`lazarus.training.schedules`, :mod:`lazarus.training.optimizer`: learning-rate schedules, AdamW, clipping
- :mod:`lazarus.training.trainer`: :class:`Trainer`, the loop (imports mlx)
- :mod:`lazarus.training.checkpoint`: resumable checkpoints
- :mod:`lazarus.training.distributed`: data parallelism over ``mlx.distributed``
- :mod:`lazarus.training.metrics`: ``metrics.jsonl`` and the loss-curve PNG

Importing this package stays light (no mlx); ``Trainer`` and ``run_trainer`` are imported on use.
"""

from __future__ import annotations

import importlib

from lazarus.training.config import TrainingConfig, build_config, click_options, read_config_file, setting

_LAZY = {"Trainer": "lazarus.training.trainer", "TrainResult": "lazarus.training.trainer",
         "run_trainer": "lazarus.training.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lazarus.training' has no attribute {name!r}")


__all__ = ["TrainingConfig", "build_config", "click_options", "read_config_file", "setting", *_LAZY]
