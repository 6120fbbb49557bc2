"""The plugin module named in pyproject.toml's ``[project.entry-points.lazarus]``.

It stays light: specs name their implementation by import path, so ``lazarus plugins list``
never imports ``rewards.py``.
"""

from __future__ import annotations

import click

import lazarus
from lazarus.specs import RewardFunctionSpec


@lazarus.hookimpl
def register_reward_functions(register):
    register(
        RewardFunctionSpec(
            name="keyword",
            entry="lazarus_example.rewards:keyword_reward",
            description="1.0 when the completion contains the record's 'keyword' (case-insensitive), else 0.0",
        )
    )


@lazarus.hookimpl
def register_commands(cli):
    @cli.command(name="reward")
    @click.argument("reward_name")
    @click.option("--prompt", default="", help="The prompt the completion answers.")
    @click.option("--completion", required=True, help="The text to score.")
    @click.option("--field", "fields", multiple=True, metavar="KEY=VALUE",
                  help="Extra record fields passed to the reward function (repeatable).")
    def reward(reward_name, prompt, completion, fields):
        """Score a completion with any installed reward function, e.g. `lazarus reward keyword`."""
        from lazarus.errors import LazarusError
        from lazarus.rewards import load_rewards

        record = {}
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep:
                raise LazarusError(f"--field {item!r} must look like KEY=VALUE")
            record[key] = value
        (reward_fn,) = load_rewards([reward_name])  # batched or per-row, checked like in training
        (value,) = reward_fn([prompt], [completion], [record])
        click.echo("n/a" if value is None else f"{value:g}")
