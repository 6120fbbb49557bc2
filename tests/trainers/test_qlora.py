"""QLoRA: the sft trainer trains a LoRA (or DoRA) adapter on a 4-bit base; the adapter loads in mlx-lm
on the same quantized base and gives the same logits there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainers.conftest import quiet_console, sft_config


@pytest.fixture(scope="module")
def quantized_llama(tiny_checkpoint, tmp_path_factory):
    import lazarus
    from lazarus import checkpoints
    from lazarus.models.quantize import quantize_model

    model, _, config = lazarus.load_model(tiny_checkpoint("llama"))
    settings = quantize_model(model, bits=4, group_size=64)
    out = tmp_path_factory.mktemp("q4") / "model"
    return checkpoints.save("hf", out, model=model, config={**config, "quantization": settings})


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_adapter_trained_on_quantized_base_matches_mlx_lm(quantized_llama, math_sft_data, tmp_path, fine_tune_type):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model

    import lazarus
    from lazarus_trainers.sft import SFTTrainer

    config = sft_config(quantized_llama, math_sft_data, tmp_path / "out", max_steps=8, learning_rate=3e-3,
                        log_interval=4, eval_batches=2, fine_tune_type=fine_tune_type)
    result = SFTTrainer(config, console=quiet_console()).train()
    assert result.last_eval_loss < result.first_eval_loss

    ours, _, _ = lazarus.load_model(quantized_llama, adapter_path=result.output)
    wrapped = [m.linear for _, m in ours.named_modules() if hasattr(m, "lora_a")]
    assert wrapped and all(isinstance(m, nn.QuantizedLinear) for m in wrapped)  # the base stayed 4-bit
    reference = load_adapters(load_model(Path(quantized_llama))[0], str(result.output))
    base, _, _ = lazarus.load_model(quantized_llama)
    ids = mx.array([[1, 40, 41, 42, 43, 44, 45]])
    assert mx.abs(ours(ids) - base(ids)).max().item() > 1e-2
    assert mx.abs(ours(ids) - reference(ids)).max().item() < 1e-4
