"""`lazarus quickstart --fast`: the quickstart recipe on the embedded model, offline, in one
directory: accuracy on held-out questions (a correct number in any form) rises by 30 points or
more, SFT teaches the answer format, the RL stage reports what it moved, the logit lens finds where
the answer appears, a second run runs nothing; `--rl dpo` moves its preference metrics.

Both runs use one directory (per pytest worker), as a user trying both RL stages would: the
`--rl dpo` run finds the data and the sft stage the first run made (the same stages, same key) and
runs dpo and what follows it. SFT, most of the quickstart's time, runs once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lazarus.cli import main


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """``(output directory, the run's output, its quickstart.json)`` of ``lazarus quickstart --fast``
    (GRPO); the summary is read at once, before a later run in the directory rewrites it."""
    output = tmp_path_factory.mktemp("quickstart") / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--fast", "--output", str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return output, result.output, json.loads((output / "quickstart.json").read_text())


@pytest.mark.slow
def test_quickstart_fast_trains_and_reports(quickstart_run):
    output, printed, summary = quickstart_run
    text = " ".join(printed.split())
    assert "Accuracy on held-out questions" in text and "answer format" in text
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


@pytest.mark.slow
def test_quickstart_dpo_moves_its_preference_metrics(quickstart_run):
    output = quickstart_run[0]  # the GRPO run's directory: its data and sft stage are reused
    result = CliRunner().invoke(main, ["quickstart", "--fast", "--rl", "dpo", "--output", str(output)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "stage sft: unchanged, skipped" in text  # the same sft stage as the GRPO run's
    summary = json.loads((output / "quickstart.json").read_text())
    assert set(summary["accuracy"]) == {"before", "after-sft", "after-dpo"}
    moved = summary["rl_metrics"]
    assert moved["rewards/margin"][1] > moved["rewards/margin"][0]
    assert "preference accuracy" in text
