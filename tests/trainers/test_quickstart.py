"""`lazarus quickstart`: offline, end to end, in one directory; says plainly the model is random."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lazarus.cli import main


def test_quickstart_trains_and_reports(tmp_path):
    output = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--output", str(output), "--steps", "40"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "random weights, so its text is not meaningful" in text
    assert "The validation loss fell by" in text
    summary = json.loads((output / "quickstart.json").read_text())
    assert summary["last_eval_loss"] < summary["first_eval_loss"] - 1.0
    for name in ("adapter_config.json", "adapters.safetensors", "lazarus.json", "metrics.jsonl", "loss.png"):
        assert (output / "adapter" / name).is_file(), name
    assert (output / "model" / "config.json").is_file() and (output / "data" / "sft" / "test.jsonl").is_file()

    from mlx_lm import load as mlx_lm_load  # the adapter it saved is one mlx-lm loads
    from mlx_lm.tuner.lora import LoRALinear

    model, _ = mlx_lm_load(str(output / "model"), adapter_path=str(output / "adapter"))
    assert sum(isinstance(module, LoRALinear) for _, module in model.named_modules()) > 0

    # running it again reuses its own directory
    again = CliRunner().invoke(main, ["quickstart", "--output", str(output), "--steps", "2"])
    assert again.exit_code == 0, again.output


def test_quickstart_refuses_a_directory_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["quickstart", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "holds other files" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
