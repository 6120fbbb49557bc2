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
    register(TrainerSpec(
        name="dpo",
        entry="lazarus_trainers.dpo:DPOTrainer",
        data_format="preference",
        description="Direct preference optimisation (sigmoid, ipo, hinge, robust) against a reference "
                    "model on {prompt, chosen, rejected} pairs.",
    ))
    register(TrainerSpec(
        name="orpo",
        entry="lazarus_trainers.orpo:ORPOTrainer",
        data_format="preference",
        description="Odds-ratio preference optimisation: SFT on the chosen answer plus an odds-ratio "
                    "term, no reference model.",
    ))
    register(TrainerSpec(
        name="dual-reward",
        entry="lazarus_trainers.dual_reward:DualRewardTrainer",
        data_format="prompt",
        description="Answer cross-entropy plus a logit-lens classifier read at one layer "
                    "({prompt, completion, label} JSONL).",
    ))
