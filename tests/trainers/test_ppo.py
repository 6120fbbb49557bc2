"""The ppo trainer on a tiny random llama: return rises on a toy reward from a plugin, the value
head is saved with the adapter and loads back, resume equals the straight run, the adapter loads
in mlx-lm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console
from tests.trainers.toy_rewards import register_toy_rewards


def ppo_config(model, data, output, **overrides):
    from lazarus_trainers.ppo import PPOConfig

    settings = dict(model=str(model), data=str(data), output=str(output), num_layers=-1, rank=4,
                    learning_rate=5e-3, batch_size=8, max_completion_length=8, beta=0.0, num_iterations=1,
                    max_steps=4, log_interval=1, save_interval=0, reward=("quarter-tokens",))
    settings.update(overrides)
    return PPOConfig(**settings)


def rows(output):
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


@pytest.fixture(scope="module")
def trained(tiny_llama, math_sft_data, tmp_path_factory):
    from lazarus_trainers.ppo import PPOTrainer

    register_toy_rewards()
    output = tmp_path_factory.mktemp("ppo") / "out"
    return PPOTrainer(ppo_config(tiny_llama, math_sft_data.parent / "prompts", output, max_steps=20),
                      console=quiet_console()).train()


def test_return_improves_on_a_toy_reward(trained):
    train = rows(trained.output)
    first = np.mean([r["return"] for r in train[:4]])
    last = np.mean([r["return"] for r in train[-4:]])
    assert last > first + 0.3, (first, last)  # about 0.25 -> 0.95 on this seed
    assert {"value_loss", "policy_loss", "approx_kl", "clip_fraction", "reward_mean", "kl"} <= set(train[-1])


def test_value_head_is_saved_with_the_adapter_and_loads(trained, tiny_llama):
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load

    import lazarus
    from lazarus_trainers.ppo import load_value_head, values_and_logits

    ids = mx.array([[1, 45, 99, 250, 7, 300, 12]])
    model, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(trained.output))
    load_value_head(model, trained.output)
    values, logits = values_and_logits(model, ids)
    saved = mx.load(str(trained.output / "value_head.safetensors"))
    assert set(saved) == {"value_head.weight", "value_head.bias"}
    assert values.shape == (1, 7) and float(mx.abs(saved["value_head.weight"]).sum()) > 0
    reference, _ = mlx_lm_load(str(tiny_llama), adapter_path=str(trained.output))  # the extra file is ignored
    np.testing.assert_allclose(np.array(logits), np.array(reference(ids)), atol=1e-4)


@pytest.mark.slow
def test_resume_equals_straight_run_with_target_kl(tiny_llama, math_sft_data, tmp_path):
    import mlx.core as mx

    from lazarus_trainers.ppo import PPOTrainer

    register_toy_rewards()
    data = math_sft_data.parent / "prompts"
    settings = dict(max_steps=6, num_iterations=3, target_kl=0.05, beta=0.05, save_interval=2, keep_checkpoints=0)
    straight = PPOTrainer(ppo_config(tiny_llama, data, tmp_path / "a", **settings), console=quiet_console()).train()
    checkpoints = sorted((straight.output / "checkpoints").glob("step-*"))
    middle = next(p for p in checkpoints if p.name != "step-00000006")
    resumed = PPOTrainer(ppo_config(tiny_llama, data, tmp_path / "b", **settings, resume=str(middle)),
                         console=quiet_console()).train()
    for name in ("adapters.safetensors", "value_head.safetensors"):
        a, b = mx.load(str(straight.output / name)), mx.load(str(resumed.output / name))
        for key in a:
            np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)
    assert rows(straight.output)[-1]["early_stops"] > 0  # the target-KL stop took part
    step = int(middle.name.split("-")[1])
    assert [r["return"] for r in rows(resumed.output)] == pytest.approx(
        [r["return"] for r in rows(straight.output)[step:]], rel=1e-5, abs=1e-7)
