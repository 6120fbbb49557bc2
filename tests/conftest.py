"""Shared fixtures (``tiny_checkpoint``, ``tiny_dataset``, ``lazarus_cli``, ``plugin_registry``) come from
lazarus-core's pytest plugin, :mod:`lazarus.testing.pytest_plugin`, the same ones plugin authors use."""

#: every family of lazarus-families, the one list the family-parametrised tests share
#: (``from tests.conftest import FAMILIES``)
FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "granite", "qwen3", "gemma3", "phi3", "starcoder2")
