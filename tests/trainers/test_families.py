"""The sft trainer needs nothing family-specific: a few LoRA steps on every family's tiny checkpoint
lower the training loss and save an adapter that loads back."""

from __future__ import annotations

import pytest

from tests.conftest import FAMILIES
from tests.trainers.conftest import quiet_console, sft_config


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_steps_on_every_family(family, tiny_checkpoint, math_sft_data, tmp_path):
    import mlx.core as mx

    import lazarus
    from lazarus_trainers.sft import SFTTrainer

    model_dir = tiny_checkpoint(family)
    config = sft_config(model_dir, math_sft_data, tmp_path / "out", max_steps=8, learning_rate=3e-3,
                        log_interval=4, eval_batches=2)
    result = SFTTrainer(config, console=quiet_console()).train()
    train_losses = [r["loss"] for r in result.metrics if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0], train_losses
    assert result.last_eval_loss < result.first_eval_loss

    adapted, _, _ = lazarus.load_model(str(model_dir), adapter_path=str(result.output))
    base, _, _ = lazarus.load_model(str(model_dir))
    ids = mx.array([[1, 40, 41, 42, 43]])
    assert float(mx.abs(adapted(ids) - base(ids)).max()) > 1e-3
