"""`lazarus quickstart --fast`: the quickstart recipe on the embedded model, offline, in one
directory: accuracy on held-out questions (a correct number in any form) rises by 30 points or
more, SFT teaches the answer format, the RL stage reports what it moved, the logit lens finds where
the answer appears, a second run runs nothing; `--rl dpo` moves its preference metrics."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lazarus.cli import main


def test_quickstart_fast_trains_and_reports(tmp_path):
    output = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--fast", "--output", str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Accuracy on held-out questions" in text and "answer format" in text
    summary = json.loads((output / "quickstart.json").read_text())
    accuracy = summary["accuracy"]
    assert set(accuracy) == {"before", "after-sft", "after-grpo"}
    assert accuracy["before"]["rows"] == 30
    assert accuracy["before"]["accuracy"] <= 0.3
    # SFT teaches it to answer: accuracy rises by 30 points or more
    assert accuracy["after-sft"]["accuracy"] >= accuracy["before"]["accuracy"] + 0.3
    assert accuracy["after-grpo"]["accuracy"] >= accuracy["before"]["accuracy"] + 0.3
    assert accuracy["after-sft"]["format"] >= 0.9
    assert "GRPO" in text and "mean reward" in text  # what the RL stage moved, and whether it added anything
    assert set(summary["rl_metrics"]) == {"reward_mean", "accuracy"}
    lens = summary["lens"]
    assert lens["layers"] == 4 and lens["answer_top1_layer"] is not None
    assert f"first becomes the top prediction after block {lens['answer_top1_layer']} of 4" in text

    # the recipe it wrote is an ordinary recipe: running it again runs nothing
    again = CliRunner().invoke(main, ["run", str(output / "quickstart.toml")])
    assert again.exit_code == 0, again.output
    assert again.output.count("unchanged, skipped") == 6

    from mlx_lm import load as mlx_lm_load  # the adapter it trained is one mlx-lm loads
    from mlx_lm.tuner.lora import LoRALinear

    from lazarus.embedded import embedded_path

    model, _ = mlx_lm_load(str(embedded_path("lazarus:tiny-math")), adapter_path=str(output / "grpo"))
    assert sum(isinstance(module, LoRALinear) for _, module in model.named_modules()) > 0


def test_quickstart_dpo_moves_its_preference_metrics(tmp_path):
    output = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--fast", "--rl", "dpo", "--output", str(output)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "quickstart.json").read_text())
    moved = summary["rl_metrics"]
    assert moved["rewards/margin"][1] > moved["rewards/margin"][0]
    assert "preference accuracy" in " ".join(result.output.split())
