"""Fixtures for trainer tests: a tiny random llama (tests/conftest.py) and a small math data set."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def math_sft_data(tmp_path_factory):
    """``DIR`` with train.jsonl / valid.jsonl / test.jsonl of arithmetic prompt/completion records
    (made by ``lazarus.data.math``: 240 problems, 10% valid, 10% test)."""
    from lazarus.data.math import generate, write_math_data

    root = tmp_path_factory.mktemp("math")
    write_math_data(generate(240, seed=0), root, valid_fraction=0.1, test_fraction=0.1)
    return root / "sft"


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


def sft_config(model, data, output, **overrides):
    """An SFTConfig for a quick run on the tiny model: all blocks adapted, no noisy side output."""
    from lazarus_trainers.sft import SFTConfig

    settings = dict(model=str(model), data=str(data), output=str(output), num_layers=-1, rank=4,
                    learning_rate=2e-3, lr_schedule="constant", warmup_steps=0, batch_size=4, max_steps=6, eval_interval=0, eval_batches=2,
                    save_interval=0, log_interval=1, max_seq_length=96)
    settings.update(overrides)
    return SFTConfig(**settings)


def quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=120)
