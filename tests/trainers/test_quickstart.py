"""`lazarus quickstart --fast`: the quickstart recipe on the embedded model, offline, in one
directory: accuracy after training is higher than before, SFT teaches the answer format, the logit
lens finds where the answer appears, a second run runs nothing, and the adapter loads in mlx-lm."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lazarus.cli import main


def test_quickstart_fast_trains_and_reports(tmp_path):
    output = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--fast", "--output", str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Arithmetic accuracy" in text and "answer format" in text
    summary = json.loads((output / "quickstart.json").read_text())
    accuracy = summary["accuracy"]
    assert set(accuracy) == {"before", "after-sft", "after-dpo"}
    assert accuracy["before"]["rows"] == 30
    assert accuracy["after-sft"]["accuracy"] > accuracy["before"]["accuracy"]
    assert accuracy["after-dpo"]["accuracy"] > accuracy["before"]["accuracy"]
    assert accuracy["before"]["format"] < 0.9 <= accuracy["after-sft"]["format"]  # SFT teaches the format
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

    model, _ = mlx_lm_load(str(embedded_path("lazarus:tiny-math")), adapter_path=str(output / "dpo"))
    assert sum(isinstance(module, LoRALinear) for _, module in model.named_modules()) > 0
