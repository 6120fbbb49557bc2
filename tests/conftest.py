"""Shared fixtures (``tiny_checkpoint``, ``tiny_dataset``, ``lazarus_cli``, ``plugin_registry``) come from
lazarus-core's pytest plugin, :mod:`lazarus.testing.pytest_plugin`, the same ones plugin authors use."""
