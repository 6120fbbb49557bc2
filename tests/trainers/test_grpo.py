"""The grpo trainer on a tiny random llama: a reward from a plugin rises, beta 0 keeps no
reference, resume equals the straight run, the adapter loads in mlx-lm, and the whole chain
data -> sft -> grpo -> eval runs from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console
from tests.trainers.toy_rewards import register_toy_rewards


@pytest.fixture(scope="session")
def math_prompts(math_sft_data):
    return math_sft_data.parent / "prompts"


def grpo_config(model, data, output, **overrides):
    from lazarus_trainers.grpo import GRPOConfig

    settings = dict(model=str(model), data=str(data), output=str(output), num_layers=-1, rank=4,
                    learning_rate=1e-2, batch_size=4, group_size=4, max_completion_length=8, beta=0.0,
                    max_steps=4, log_interval=1, save_interval=0, reward=("prefer-token",))
    settings.update(overrides)
    return GRPOConfig(**settings)


def rows(output, split="train"):
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def trained(tiny_llama, math_prompts, tmp_path_factory):
    from lazarus_trainers.grpo import GRPOTrainer

    register_toy_rewards()
    output = tmp_path_factory.mktemp("grpo") / "out"
    config = grpo_config(tiny_llama, math_prompts, output, max_steps=20, log_completions=2)
    return GRPOTrainer(config, console=quiet_console()).train()


def test_a_plugin_reward_rises_clearly(trained):
    train = rows(trained.output)
    assert [r["step"] for r in train] == list(range(1, 21))
    first = np.mean([r["reward_mean"] for r in train[:4]])
    last = np.mean([r["reward_mean"] for r in train[-4:]])
    assert last > first + 0.4, (first, last)  # about 0.05 -> 0.9 on this seed
    row = train[-1]
    for key in ("loss", "learning_rate", "tokens_per_second", "reward_mean", "reward_std", "reward/prefer-token",
                "kl", "clip_fraction", "completion_length_mean", "completion_length_max", "zero_spread_fraction",
                "seconds_generation", "seconds_scoring", "seconds_update", "rollout_tokens_per_second"):
        assert key in row, key
    assert row["completion_length_max"] <= 8 and row["seconds_generation"] > 0
    logged = [json.loads(line) for line in (trained.output / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 2 * 20 and {"prompt", "completion", "reward", "advantage"} <= set(logged[0])


def test_adapter_loads_in_mlx_lm(trained, tiny_llama):
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load

    import lazarus

    ids = mx.array([[1, 45, 99, 250, 7, 300, 12]])
    reference, _ = mlx_lm_load(str(tiny_llama), adapter_path=str(trained.output))
    ours, _, _ = lazarus.load_model(str(tiny_llama), adapter_path=str(trained.output))
    base, _, _ = lazarus.load_model(str(tiny_llama))
    np.testing.assert_allclose(np.array(ours(ids)), np.array(reference(ids)), atol=1e-4)
    assert float(mx.abs(base(ids) - reference(ids)).max()) > 1e-3


def test_beta_zero_keeps_no_reference(tiny_llama, math_prompts, tmp_path):
    from lazarus_trainers.grpo import GRPOTrainer

    register_toy_rewards()
    for beta, kind in ((0.0, "none"), (0.1, "adapter-off")):
        trainer = GRPOTrainer(grpo_config(tiny_llama, math_prompts, tmp_path / str(beta), beta=beta),
                              console=quiet_console())
        trainer.load()
        trainer.load_data()
        trainer.setup()
        assert trainer.reference.kind == kind and trainer.reference.exists == (beta > 0)


@pytest.mark.slow
def test_resume_equals_straight_run(tiny_llama, math_prompts, tmp_path):
    """Rollouts reused for 2 steps, a KL term, and a save due at step 3 (mid-rollout, so it is
    written at step 4): the run resumed there ends with the straight run's weights and metrics."""
    import mlx.core as mx

    from lazarus_trainers.grpo import GRPOTrainer

    register_toy_rewards()
    settings = dict(max_steps=6, num_iterations=2, beta=0.05, save_interval=3, keep_checkpoints=0,
                    loss_type="dapo", epsilon_high=0.28, learning_rate=1e-3)
    straight = GRPOTrainer(grpo_config(tiny_llama, math_prompts, tmp_path / "a", **settings),
                           console=quiet_console()).train()
    saved = sorted(p.name for p in (straight.output / "checkpoints").glob("step-*"))
    assert saved == ["step-00000004", "step-00000006"]
    resumed = GRPOTrainer(grpo_config(tiny_llama, math_prompts, tmp_path / "b", **settings,
                                      resume=str(straight.output / "checkpoints" / "step-00000004")),
                          console=quiet_console()).train()
    a, b = mx.load(str(straight.output / "adapters.safetensors")), mx.load(str(resumed.output / "adapters.safetensors"))
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)
    keys = ("loss", "reward_mean", "kl", "completion_length_mean")
    flat = lambda out, skip: [r[k] for r in rows(out)[skip:] for k in keys]  # noqa: E731
    assert flat(resumed.output, 0) == pytest.approx(flat(straight.output, 4), rel=1e-5, abs=1e-7)
    assert rows(straight.output)[-1]["kl"] > 0


def test_data_sft_grpo_eval_chain_from_the_cli(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from lazarus.cli import main

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    common = ["--model", tiny_llama, "--num-layers", "-1", "--rank", "4", "--log-interval", "1",
              "--save-interval", "0"]
    run("data", "generate", "math", "--output", tmp_path / "math", "--count", "60", "--seed", "1")
    run("train", "sft", *common, "--data", tmp_path / "math/sft", "--output", tmp_path / "sft",
        "--max-steps", "2", "--max-seq-length", "96")
    run("train", "grpo", *common, "--data", tmp_path / "math/prompts", "--output", tmp_path / "grpo",
        "--adapter", tmp_path / "sft", "--reward", "arithmetic", "--reward", "format:0.2", "--max-steps", "2",
        "--group-size", "2", "--batch-size", "2", "--max-completion-length", "8", "--loss-type", "gspo")
    row = rows(tmp_path / "grpo")[-1]
    assert {"reward/arithmetic", "reward/format", "kl"} <= set(row)
    result = run("eval", "--model", tiny_llama, "--adapter", tmp_path / "grpo", "--data", tmp_path / "math/prompts",
                 "--reward", "arithmetic", "--max-tokens", "8", "--limit", "4", "--output", tmp_path / "eval.jsonl")
    assert "accuracy" in result.output and len((tmp_path / "eval.jsonl").read_text().splitlines()) == 4
