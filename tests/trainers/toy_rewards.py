"""Toy reward functions for the RL trainer tests, registered as an in-process plugin by
:func:`register_toy_rewards` (the same path a pip-installed reward plugin takes)."""

from __future__ import annotations

import types

#: the token the ``prefer-token`` reward wants (common enough in the tiny model's random samples)
TARGET = 7


def prefer_token(prompts, completions, records):
    """Share of the completion's tokens that are TARGET."""
    return [sum(t == TARGET for t in r["completion_ids"]) / max(1, len(r["completion_ids"])) for r in records]


def quarter_tokens(prompts, completions, records):
    """Share of the completion's tokens whose id is a multiple of 4 (about 1/4 at random)."""
    return [sum(t % 4 == 0 for t in r["completion_ids"]) / max(1, len(r["completion_ids"])) for r in records]


def register_toy_rewards() -> None:
    """Register ``prefer-token`` and ``quarter-tokens`` in the process-wide registry (once)."""
    import lazarus
    from lazarus.plugins import get_registry
    from lazarus.specs import RewardFunctionSpec

    registry = get_registry()
    if "prefer-token" in registry.names("reward-function"):
        return
    plugin = types.ModuleType("toy_rl_rewards")

    @lazarus.hookimpl
    def register_reward_functions(register):
        register(RewardFunctionSpec(name="prefer-token", entry=f"{__name__}:prefer_token"))
        register(RewardFunctionSpec(name="quarter-tokens", entry=f"{__name__}:quarter_tokens"))

    plugin.register_reward_functions = register_reward_functions
    assert registry.add_plugin(plugin, "toy-rl-rewards").status == "loaded"
