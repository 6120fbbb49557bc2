"""Core CLI commands, one module per command group (see CORE_COMMANDS in lazarus.cli)."""
