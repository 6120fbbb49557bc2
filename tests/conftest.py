"""Shared fixtures: tiny random checkpoints of every family in real Hugging Face layout."""

from __future__ import annotations

import json

import pytest

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "granite")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory ``tiny_checkpoint(family="llama", seed=0, dtype="float32", **config_overrides) -> Path``.

    Writes (once per session and argument set) a random checkpoint with
    ``lazarus.models.create.create_checkpoint``: config.json, model.safetensors, tokenizer files,
    generation_config.json and lazarus.json, 2 layers, hidden 64, vocab 512. ``config_overrides``
    update the family's tiny config.json (e.g. ``sliding_window=4``). The directory is shared by
    every test of the session: copy it (``shutil.copytree``) before changing anything in it.
    """
    from lazarus.models.create import create_checkpoint

    made = {}

    def make(family: str = "llama", seed: int = 0, dtype: str = "float32", **config_overrides):
        key = (family, seed, dtype, json.dumps(config_overrides, sort_keys=True))
        if key not in made:
            root = tmp_path_factory.mktemp(f"tiny-{family}")
            made[key] = create_checkpoint(family, root / "model", seed=seed, dtype=dtype,
                                          config_overrides=config_overrides)
        return made[key]

    return make
