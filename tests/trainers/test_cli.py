"""`lazarus train`: the trainer registry drives the subcommands, one schema drives options and
config-file keys, and mistakes exit with code 2 and one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from lazarus.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_train_help_lists_trainers_without_importing_them():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from lazarus.cli import main
        result = CliRunner().invoke(main, ["train", "--help"])
        print(result.output)
        print("IMPORTED:", sorted(m for m in ("mlx.core", "lazarus_trainers.sft", "lazarus.training.trainer")
                                  if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Trainers:" in out and "sft" in out and "Supervised fine-tuning" in out
    assert "IMPORTED: []" in out


def test_unknown_trainer_is_the_registry_error():
    result = _run("train", "nope", "--model", "x")
    assert result.exit_code == 2
    assert "no trainer named 'nope'; installed: " in result.output and "sft" in result.output
    assert "Traceback" not in result.output


def test_trainer_options_come_from_its_config_class():
    result = _run("train", "sft", "--help")
    assert result.exit_code == 0
    for option in ("--learning-rate", "--lr-schedule", "--lora-targets", "--num-layers", "--resume",
                   "--config", "--grad-accumulation", "--mask-prompt / --no-mask-prompt"):
        assert option in result.output


def test_config_file_sets_a_field_and_cli_overrides_it(tiny_llama, math_sft_data, tmp_path):
    config = tmp_path / "sft.toml"
    config.write_text(textwrap.dedent(f"""
        model = "{tiny_llama}"
        data = "{math_sft_data}"
        learning_rate = 5e-4
        rank = 2
        batch_size = 2
        max_steps = 2
        num_layers = 1
        lora_targets = ["q_proj", "v_proj"]
        eval_batches = 1
    """))
    output = tmp_path / "out"
    result = _run("train", "sft", "--config", str(config), "--rank", "3", "--output", str(output))
    assert result.exit_code == 0, result.output
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert adapter["lora_parameters"]["rank"] == 3  # the command line wins over the file
    assert adapter["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert adapter["num_layers"] == 1
    state = json.loads((output / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["config"]["learning_rate"] == 5e-4 and state["config"]["batch_size"] == 2  # from the file
    assert state["config"]["rank"] == 3

    # a second fresh run into the same output would mix two runs: refused unless --overwrite
    again = _run("train", "sft", "--config", str(config), "--output", str(output))
    assert again.exit_code == 2 and f"--resume {output}" in again.output and "--overwrite" in again.output
    assert (output / "checkpoints" / "step-00000002").is_dir()
    again = _run("train", "sft", "--config", str(config), "--output", str(output), "--overwrite", "--rank", "5")
    assert again.exit_code == 0, again.output
    assert json.loads((output / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 5


def test_unknown_config_key_exits_2_naming_file_and_key(tiny_llama, math_sft_data, tmp_path):
    config = tmp_path / "sft.toml"
    config.write_text("learning_rate = 1e-4\nlearnig_rate_typo = 3\n")
    output = tmp_path / "out"
    result = _run("train", "sft", "--config", str(config), "--model", str(tiny_llama),
                  "--data", str(math_sft_data), "--output", str(output))
    assert result.exit_code == 2
    assert str(config) in result.output and "unknown key 'learnig_rate_typo'" in result.output
    assert not output.exists()


def test_missing_model_and_bad_values_exit_2(math_sft_data, tmp_path):
    result = _run("train", "sft", "--data", str(math_sft_data), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "missing --model" in result.output
    result = _run("train", "sft", "--model", "m", "--data", "d", "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output
    result = _run("train", "sft", "--resume", str(tmp_path / "nothing-here"))
    assert result.exit_code == 2 and "no such directory" in result.output


def test_bad_lora_target_names_the_layers(tiny_llama, math_sft_data, tmp_path):
    result = _run("train", "sft", "--model", str(tiny_llama), "--data", str(math_sft_data),
                  "--output", str(tmp_path / "o"), "--lora-targets", "qq_proj", "--max-steps", "1", "--num-layers", "2")
    assert result.exit_code == 2
    assert "'qq_proj' matches no linear layer" in result.output and "self_attn.q_proj" in result.output
