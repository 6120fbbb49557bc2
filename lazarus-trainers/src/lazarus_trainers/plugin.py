"""Registers the trainers and reward functions of this distribution (imported on use).

Each spec names its Trainer class by import path, so listing trainers (``lazarus train --help``,
``lazarus plugins list``) never imports mlx or the trainer code.
"""

from __future__ import annotations

import lazarus
from lazarus.specs import TrainerSpec


@lazarus.hookimpl
def register_trainers(register):
    register(TrainerSpec(
        name="sft",
        entry="lazarus_trainers.sft:SFTTrainer",
        data_format="sft",
        description="Supervised fine-tuning: masked cross-entropy on completion tokens "
                    "(prompt/completion, chat or text JSONL).",
    ))
