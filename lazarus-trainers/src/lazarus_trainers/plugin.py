"""Registers the trainers and reward functions of this distribution (imported on use).

Each spec names its Trainer class by import path, so listing trainers (``lazarus train --help``,
``lazarus plugins list``) never imports mlx or the trainer code.
"""

from __future__ import annotations

import lazarus
from lazarus.specs import RewardFunctionSpec, TrainerSpec


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
    register(TrainerSpec(
        name="grpo",
        entry="lazarus_trainers.grpo:GRPOTrainer",
        data_format="prompt",
        description="Online RL with group-relative advantages (grpo, dr-grpo, bnpo, dapo, gspo) from "
                    "--reward plugins, on prompt JSONL.",
    ))
    register(TrainerSpec(
        name="ppo",
        entry="lazarus_trainers.ppo:PPOTrainer",
        data_format="prompt",
        description="Online RL with a value head, GAE and clipped policy/value losses, rewarded by "
                    "--reward plugins, on prompt JSONL.",
    ))


@lazarus.hookimpl
def register_reward_functions(register):
    register(RewardFunctionSpec(
        name="arithmetic", entry="lazarus_trainers.rewards:arithmetic",
        description="1.0 when the final answer ('The answer is N') equals the record's answer/expression, "
                    "else 0.0 (None without those fields)."))
    register(RewardFunctionSpec(
        name="arithmetic-any", entry="lazarus_trainers.rewards:arithmetic_any",
        description="1.0 when the final number in any form (the 'The answer is N' sentence, else the last "
                    "equation's result) equals the record's answer/expression, else 0.0."))
    register(RewardFunctionSpec(
        name="format", entry="lazarus_trainers.rewards:answer_format",
        description="1.0 when the completion ends with 'The answer is N.', 0.5 when it says so elsewhere, "
                    "else 0.0."))
    register(RewardFunctionSpec(
        name="length", entry="lazarus_trainers.rewards:length",
        description="0 within a budget of completion tokens (record field token_budget, default 128), "
                    "then -(overshoot / budget)."))
