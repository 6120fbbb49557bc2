"""Hook specifications: the whole plugin contract of Lazarus.

A plugin is a module listed in the ``lazarus`` entry-point group. It implements any of the hooks
below with ``@lazarus.hookimpl``. Registration hooks receive a ``register`` callback and call it
once per thing they provide, passing a spec object from :mod:`lazarus.specs`.
"""

from __future__ import annotations

from pluggy import HookspecMarker

hookspec = HookspecMarker("lazarus")


@hookspec
def register_families(register):
    """Register model families: ``register(FamilySpec(...))``. Since 0.1."""


@hookspec
def register_adapters(register):
    """Register adapter types (lora, dora, full, ...): ``register(AdapterSpec(...))``. Since 0.1."""


@hookspec
def register_trainers(register):
    """Register trainers (sft, dpo, ...): ``register(TrainerSpec(...))``. Since 0.1."""


@hookspec
def register_checkpoint_formats(register):
    """Register checkpoint formats: ``register(CheckpointFormatSpec(...))``. Since 0.1."""


@hookspec
def register_probes(register):
    """Register introspection probes (logit-lens, patch, ...): ``register(ProbeSpec(...))``. Since 0.1."""


@hookspec
def register_reward_functions(register):
    """Register reward functions for RL trainers: ``register(RewardFunctionSpec(...))``. Since 0.1."""


@hookspec
def register_experts(register):
    """Register small expert models (GRU, LSTM, ...): ``register(ExpertSpec(...))``. Since 0.1."""


@hookspec
def register_environments(register):
    """Register environments experts act in: ``register(EnvironmentSpec(...))``. Since 0.1."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``lazarus`` CLI with ``cli.add_command(...)``. Since 0.1."""


@hookspec
def register_training_callbacks(register):
    """Contribute callbacks to every training run: ``register(factory)``, where ``factory(trainer)``
    returns a callback (an object with any of ``on_step``, ``on_log``, ``on_eval``,
    ``on_checkpoint``; see :mod:`lazarus.training.callbacks`) or None. Called when a run starts:
    a progress UI or a run logger lives here. Since 0.1."""
