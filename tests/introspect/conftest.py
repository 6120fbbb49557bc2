"""Fixtures for the introspection tests: tiny real checkpoints per family, an adapter, the CLI.

Checkpoints come from the shared ``tiny_checkpoint`` fixture (``lazarus.models.create``: random
weights in each family's real Hugging Face layout plus a trained tokenizer) and are loaded
through the real loader, once per test session.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint):
    """``checkpoint(family) -> Path`` of the shared tiny random checkpoint (tests/conftest.py), seed 1."""

    def make(family: str = "llama"):
        return tiny_checkpoint(family, seed=1)

    return make


@pytest.fixture(scope="session")
def loaded(checkpoint):
    """``loaded(family) -> (model, tokenizer)`` through ``lazarus.load_model`` (cached)."""
    import lazarus

    cache = {}

    def get(family: str = "llama"):
        if family not in cache:
            model, tokenizer, _ = lazarus.load_model(checkpoint(family))
            cache[family] = (model, tokenizer)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def adapter_dir(checkpoint, tmp_path_factory):
    """``adapter_dir(family) -> Path``: a LoRA adapter (non-zero B, so it changes the model) saved
    with the core adapters API for that family's tiny checkpoint."""
    made = {}

    def make(family: str = "llama"):
        if family in made:
            return made[family]
        import mlx.core as mx
        from mlx.utils import tree_flatten

        import lazarus
        from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter, save_adapter

        model, _, _ = lazarus.load_model(checkpoint(family))
        config = AdapterConfig(fine_tune_type="lora", num_layers=2, lora_parameters=LoraParameters(
            rank=4, scale=4.0, keys=("self_attn.q_proj", "self_attn.v_proj",
                                     "mlp.c_proj" if family == "starcoder2" else "mlp.down_proj")))
        apply_adapter(model, config)
        mx.random.seed(3)
        updates = [(k, mx.random.normal(v.shape) * 0.3) for k, v in tree_flatten(model.trainable_parameters())
                   if k.endswith("lora_b")]
        model.load_weights(updates, strict=False)
        path = tmp_path_factory.mktemp(f"adapter-{family}") / "adapter"
        save_adapter(model, path, config)
        made[family] = path
        return path

    return make


@pytest.fixture
def cli(tmp_path):
    """``cli(*args) -> (exit_code, output)`` running ``lazarus`` in-process; ``cli.json(*args)`` adds
    ``--json`` and returns the parsed JSON (asserting exit code 0)."""
    from click.testing import CliRunner

    from lazarus.cli import main

    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.output

    counter = iter(range(10_000))

    def run_json(*args):
        path = tmp_path / f"out{next(counter)}.json"
        code, output = run(*args, "--json", path)
        assert code == 0, output
        return json.loads(path.read_text())

    run.json = run_json
    return run
