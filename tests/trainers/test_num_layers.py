"""One --num-layers rule on every path: left out, a trainer adapts min(16, blocks) (with or without
--lora-targets); given larger than the model, it is an error naming both numbers."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from lazarus.cli import main


def _train(*args):
    return CliRunner().invoke(main, ["train", "sft", *map(str, args)], catch_exceptions=False)


def _common(model, data, output):
    return ["--model", model, "--data", data, "--output", output, "--max-steps", "1", "--save-interval", "0",
            "--eval-batches", "1", "--max-seq-length", "64", "--rank", "2"]


@pytest.mark.parametrize("targets", [None, "q_proj,v_proj"])
def test_the_default_adapts_every_block_of_a_small_model(tiny_llama, math_sft_data, tmp_path, targets):
    extra = ["--lora-targets", targets] if targets else []
    result = _train(*_common(tiny_llama, math_sft_data, tmp_path / "o"), *extra)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert saved["num_layers"] == 2  # the tiny llama has 2 blocks; mlx-lm reads this as the last 2
    if targets:
        assert saved["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]


@pytest.mark.parametrize("targets", [None, "q_proj"])
def test_an_explicit_num_layers_above_the_model_names_both_numbers(tiny_llama, math_sft_data, tmp_path, targets):
    extra = ["--lora-targets", targets] if targets else []
    result = _train(*_common(tiny_llama, math_sft_data, tmp_path / "o"), "--num-layers", "5", *extra)
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: --num-layers 5 is more than the model's 2 blocks"), line
    assert not (tmp_path / "o" / "adapter_config.json").exists()


def test_minus_one_still_means_all_and_a_run_saved_with_the_old_default_resumes(tiny_llama, math_sft_data,
                                                                                  tmp_path):
    out = tmp_path / "o"
    result = _train(*_common(tiny_llama, math_sft_data, out), "--num-layers", "-1", "--max-steps", "2",
                    "--save-interval", "1", "--keep-checkpoints", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["num_layers"] == -1
    # a checkpoint written before the default became "16 or all" stored num_layers = 16
    old = tmp_path / "old"
    shutil.copytree(out / "checkpoints" / "step-00000001", old)
    state = json.loads((old / "trainer_state.json").read_text())
    state["config"]["num_layers"] = 16
    (old / "trainer_state.json").write_text(json.dumps(state))
    adapter = json.loads((old / "adapter_config.json").read_text())
    adapter["num_layers"] = 2
    (old / "adapter_config.json").write_text(json.dumps(adapter))
    result = CliRunner().invoke(main, ["train", "sft", "--resume", str(old), "--output", str(tmp_path / "r")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "adapter_config.json").read_text())["num_layers"] == 2
