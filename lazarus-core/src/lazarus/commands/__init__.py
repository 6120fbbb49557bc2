"""Core CLI commands, one module per command group.

This module is a leaf (it imports nothing of Lazarus), so the plugin registry, ``plugins check``
and ``plugins new`` can know the core's command names without importing :mod:`lazarus.cli`.
"""

from __future__ import annotations

#: core commands that live in their own module, as name -> "module:attribute". Those modules
#: import only click at top level (mlx and model code are imported inside the command).
CORE_COMMANDS: dict[str, str] = {
    "adapters": "lazarus.commands.adapters:adapters",
    "data": "lazarus.commands.data:data",
    "eval": "lazarus.commands.eval:eval_command",
    "export": "lazarus.commands.export:export",
    "generate": "lazarus.commands.generate:generate",
    "install": "lazarus.commands.install:install",
    "models": "lazarus.commands.models:models",
    "quickstart": "lazarus.commands.quickstart:quickstart",
    "run": "lazarus.commands.run:run",
    "quantize": "lazarus.commands.quantize:quantize",
    "train": "lazarus.commands.train:train",
    "uninstall": "lazarus.commands.install:uninstall",
}

#: commands :mod:`lazarus.cli` defines itself
CLI_COMMANDS: tuple[str, ...] = ("plugins", "doctor")

#: every command name the core CLI owns: a plugin may not register one of these
CORE_COMMAND_NAMES: frozenset[str] = frozenset(CORE_COMMANDS) | frozenset(CLI_COMMANDS)
