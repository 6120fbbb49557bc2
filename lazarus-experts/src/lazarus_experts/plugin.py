"""Registers the experts, environments and the ``lazarus experts`` command group of this
distribution. Kept light: everything is named by ``entry`` and imported only when used."""

from __future__ import annotations

import lazarus
from lazarus.specs import EnvironmentSpec, ExpertSpec


@lazarus.hookimpl
def register_experts(register):
    register(ExpertSpec(name="gru", entry="lazarus_experts.experts:GRUExpert",
                        description="A recurrent (GRU) policy with an optional value head, discrete or continuous actions"))
    register(ExpertSpec(name="lstm", entry="lazarus_experts.experts:LSTMExpert",
                        description="A recurrent (LSTM) policy with an optional value head, discrete or continuous actions"))


@lazarus.hookimpl
def register_environments(register):
    register(EnvironmentSpec(name="reach", entry="lazarus_experts.environments:ReachEnv",
                             description="Move a value to a target under noise (continuous or 3 discrete actions)"))
    register(EnvironmentSpec(name="arith-delegate", entry="lazarus_experts.arith:ArithDelegateEnv",
                             description="An LLM answers arithmetic; it may call a calculator tool or delegate to an expert"))


@lazarus.hookimpl
def register_commands(cli):
    from lazarus_experts.commands import experts

    cli.add_command(experts)
