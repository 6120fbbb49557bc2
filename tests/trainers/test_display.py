"""What a user sees while training and after: defaults that depend on the fine-tune type, a
validation budget bounded by the run's length, the trainer's headline metrics on the progress bar,
in the eval lines, the summary, loss.png and a recipe's table, and notes where a run needs one."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tests.trainers.toy_rewards import register_toy_rewards


def console():
    return Console(file=io.StringIO(), width=160)


def rows(output, split="train"):
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# -- defaults -------------------------------------------------------------------------------------------
def test_learning_rate_and_schedule_defaults_depend_on_trainer_and_fine_tune_type(lazarus_cli):
    from lazarus_trainers.dpo import DPOConfig
    from lazarus_trainers.grpo import GRPOConfig
    from lazarus_trainers.orpo import ORPOConfig
    from lazarus_trainers.ppo import PPOConfig
    from lazarus_trainers.sft import SFTConfig

    expected = {SFTConfig: (1e-4, 1e-5), DPOConfig: (5e-5, 1e-6), ORPOConfig: (5e-5, 1e-6),
                GRPOConfig: (2e-5, 1e-6), PPOConfig: (2e-5, 1e-6)}
    for cls, (adapter, full) in expected.items():
        assert cls().learning_rate == adapter and cls(fine_tune_type="dora").learning_rate == adapter
        assert cls(fine_tune_type="full").learning_rate == full
        assert cls(fine_tune_type="full", learning_rate=3e-3).learning_rate == 3e-3  # given: kept
        assert cls().lr_schedule == "cosine"
    # --help says what the default is, per trainer
    sft_help = " ".join(lazarus_cli("train", "sft", "--help").stdout.split())
    assert "[default: 0.0001 for lora/dora adapters, 1e-05 for full]" in sft_help
    dpo_help = " ".join(lazarus_cli("train", "dpo", "--help").stdout.split())
    assert "[default: 5e-05 for lora/dora adapters, 1e-06 for full]" in dpo_help
    assert "[default: 5% of the run's steps, at most 100]" in dpo_help


def test_warmup_eval_batches_and_log_interval_follow_the_run_length():
    from lazarus.training.config import resolve_eval_batches, resolve_log_interval, resolve_warmup
    from lazarus_trainers.sft import SFTConfig

    config = SFTConfig()
    assert [resolve_warmup(config, n) for n in (3, 40, 1000, 10000)] == [0, 2, 50, 100]
    # all evaluations together take at most half a batch per training batch, and 25 per evaluation
    assert [resolve_eval_batches(config, n) for n in (3, 20, 100, 1000)] == [1, 5, 25, 25]
    assert resolve_eval_batches(SFTConfig(eval_interval=10), 100) == 4  # 11 evaluations, 44 batches
    assert resolve_eval_batches(SFTConfig(eval_batches=-1), 20) == -1
    assert [resolve_log_interval(config, n) for n in (3, 40, 100, 1000)] == [1, 2, 5, 10]
    assert resolve_log_interval(SFTConfig(log_interval=7), 3) == 7


def test_a_short_run_says_what_validation_costs_and_keeps_it_small(tiny_llama, math_sft_data, tmp_path, lazarus_cli):
    """8 steps on 24 validation examples: 2 batches at the start and 2 at the end (not 25 + 25),
    said on screen; a train row at every step."""
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", tmp_path / "o",
                         "--max-steps", "8", "--batch-size", "4", "--num-layers", "-1", "--max-seq-length", "96")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Validation: 2 of 6 batches at the start and the end (4 batches over the run, next to 8 training batches" \
        in text
    assert "lr 0.0001 (cosine)" in text
    evals = rows(tmp_path / "o", "eval")
    assert [(r["step"], r["eval_batches"]) for r in evals] == [(0, 2), (8, 2)]
    assert [r["step"] for r in rows(tmp_path / "o")] == list(range(1, 9))


# -- headline metrics -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grpo_run(tiny_llama, math_sft_data, tmp_path_factory):
    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer

    register_toy_rewards()
    output = tmp_path_factory.mktemp("grpo-display") / "out"
    config = GRPOConfig(model=str(tiny_llama), data=str(math_sft_data.parent / "prompts"), output=str(output),
                        num_layers=-1, rank=4, learning_rate=1e-2, batch_size=4, group_size=4,
                        max_completion_length=8, beta=0.0, max_steps=3, save_interval=0,
                        reward=("prefer-token",))
    screen = console()
    trainer = GRPOTrainer(config, console=screen)
    return trainer, trainer.train(), screen.file.getvalue()


def test_grpo_shows_reward_and_accuracy_not_a_meaningless_loss(grpo_run):
    from lazarus.recipes import _train_metric
    from lazarus.training.metrics import loss_figure, read_metrics

    trainer, result, screen = grpo_run
    assert trainer.headline_metrics == ("reward_mean", "accuracy")
    bar = next(line for line in screen.splitlines() if line.startswith("train"))
    assert "reward " in bar and "accuracy " in bar and "loss" not in bar
    train = rows(result.output)
    assert [r["step"] for r in train] == [1, 2, 3]  # a 3-step run logs every step
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in train)
    summary = " ".join(screen.split())
    assert f"reward {train[0]['reward_mean']:.3f} -> {train[-1]['reward_mean']:.3f}" in summary
    assert "(training steps 1 -> 3)" in summary
    # the recipe table names the same figures
    metric = _train_metric(result, trainer.headline_metrics)
    assert "reward" in metric and "accuracy" in metric
    # loss.png: labelled for GRPO, a second panel with the headline metrics, a marker on every point
    figure = loss_figure(read_metrics(result.output / "metrics.jsonl"), loss_label="grpo loss",
                         headline=trainer.headline_metrics)
    loss_axes, metric_axes = figure.axes
    assert loss_axes.get_ylabel() == "grpo loss"
    assert {"train reward", "train accuracy"} <= set(metric_axes.get_legend_handles_labels()[1])
    assert all(line.get_marker() == "o" for axes in figure.axes for line in axes.get_lines())
    assert (result.output / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_dpo_eval_lines_and_summary_show_preference_accuracy_and_margin(tiny_llama, math_sft_data, tmp_path):
    from lazarus.training.metrics import loss_figure, read_metrics
    from lazarus_trainers.dpo import DPOConfig, DPOTrainer

    config = DPOConfig(model=str(tiny_llama), data=str(math_sft_data.parent / "preference"), output=str(tmp_path / "o"),
                       num_layers=-1, rank=4, learning_rate=1e-3, batch_size=4, max_steps=3, save_interval=0,
                       max_seq_length=96)
    screen = console()
    result = DPOTrainer(config, console=screen).train()
    text = screen.file.getvalue()
    assert "step 0: eval loss 0.6931 · pref accuracy 0.000 · margin 0.000" in text
    evals = rows(result.output, "eval")
    first, last = evals[0], evals[-1]
    assert (f"pref accuracy {first['rewards/accuracy']:.3f} -> {last['rewards/accuracy']:.3f} · "
            f"margin {first['rewards/margin']:.3f} -> {last['rewards/margin']:.3f}") in text
    figure = loss_figure(read_metrics(result.output / "metrics.jsonl"), loss_label="dpo loss",
                         headline=("rewards/accuracy", "rewards/margin"))
    assert figure.axes[0].get_ylabel() == "dpo loss"
    assert "eval pref accuracy" in figure.axes[1].get_legend_handles_labels()[1]


def test_a_loss_plot_with_one_logged_step_shows_the_point(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from lazarus.training.metrics import loss_figure, plot_loss_curve

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"split": "train", "step": 3, "loss": 1.25}) + "\n")
    figure = loss_figure([{"split": "train", "step": 3, "loss": 1.25}], loss_label="cross-entropy loss (nats/token)")
    low, high = figure.axes[0].get_xlim()
    assert low < 3 < high and high - low >= 2  # room around the lone point
    assert [t for t in figure.axes[0].get_xticks() if low <= t <= high] == \
        [t for t in figure.axes[0].get_xticks() if low <= t <= high and float(t).is_integer()]
    png = plot_loss_curve(metrics, tmp_path / "loss.png", loss_label="sft loss")
    pixels = imread(png)[..., :3]
    blue = np.all(np.abs(pixels - np.array([31, 119, 180]) / 255) < 0.08, axis=-1)
    assert blue.sum() > 20  # the marker is drawn (the legend's own marker adds a few pixels too)


def test_sft_summary_and_plot_say_cross_entropy():
    from lazarus_trainers.sft import SFTTrainer

    assert SFTTrainer.headline_metrics == ("loss",)
    assert SFTTrainer.loss_label == "cross-entropy loss (nats/token)"


# -- notes a run needs ----------------------------------------------------------------------------------
def test_resume_with_other_eval_batches_says_the_evals_differ(tiny_llama, math_sft_data, tmp_path, lazarus_cli):
    out = tmp_path / "o"
    common = ["--model", tiny_llama, "--data", math_sft_data, "--num-layers", "-1", "--max-seq-length", "96",
              "--max-steps", "4", "--save-interval", "2"]
    first = lazarus_cli("train", "sft", *common, "--output", out, "--eval-batches", "3")
    assert first.exit_code == 0, first.output
    assert "not the same measurement" not in first.output
    resumed = lazarus_cli("train", "sft", "--resume", out / "checkpoints" / "step-00000002", "--eval-batches", "1")
    assert resumed.exit_code == 0, resumed.output
    text = " ".join(resumed.output.split())
    assert "(over 3 and 1 validation batches: --eval-batches changed on resume, so the two are not the same " \
           "measurement)" in text


def test_qlora_on_the_cpu_says_it_is_slow(tiny_llama, math_sft_data, tmp_path, lazarus_cli):
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        pytest.skip("the note is for CPU runs")
    quantized = tmp_path / "q4"
    made = lazarus_cli("quantize", "--model", tiny_llama, "--bits", "4", "--group-size", "32", "--output", quantized)
    assert made.exit_code == 0, made.output
    result = lazarus_cli("train", "sft", "--model", quantized, "--data", math_sft_data, "--output", tmp_path / "o",
                         "--max-steps", "1", "--max-seq-length", "64", "--eval-batches", "1")
    assert result.exit_code == 0, result.output
    assert "QLoRA on the CPU" in " ".join(result.output.split())
    plain = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", tmp_path / "p",
                        "--max-steps", "1", "--max-seq-length", "64", "--eval-batches", "1")
    assert plain.exit_code == 0 and "QLoRA" not in plain.output
