"""What commands print: warnings as one clean line, a `generate` default that fits the model's
context, `models info` on a quantized model, and `lazarus install` without pip's noise."""

from __future__ import annotations

import json
import types

import click

import lazarus


def test_python_warnings_are_one_clean_line_each_printed_once(lazarus_cli, plugin_registry):
    """A plugin command that warns three times (two messages differing only in a number): one
    `Warning: ...` line, no source path, no category name."""
    plugin = types.ModuleType("warny")

    @lazarus.hookimpl
    def register_commands(cli):
        @cli.command("warny")
        def warny():
            import warnings

            for tokens in (12, 13, 13):
                warnings.warn(f"a {tokens}-token prompt runs past the context", UserWarning, stacklevel=1)
            click.echo("done")

    plugin.register_commands = register_commands
    plugin_registry(plugin)
    result = lazarus_cli("warny")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["Warning: a 12-token prompt runs past the context"]
    assert result.stdout == "done\n"


def test_generate_default_max_tokens_fits_the_context(lazarus_cli, tiny_checkpoint):
    model = tiny_checkpoint("llama", max_position_embeddings=16)
    result = lazarus_cli("generate", "--model", model, "--prompt", "1 + 1")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    stats = result.stderr.splitlines()[-1]  # prompt: N tokens ... | generation: M tokens ...
    prompt = int(stats.split("prompt: ")[1].split()[0])
    generated = int(stats.split("generation: ")[1].split()[0])
    assert prompt + generated <= 16


def test_models_info_counts_a_quantized_models_real_parameters(lazarus_cli, tiny_checkpoint, tmp_path):
    source = tiny_checkpoint("llama")
    quantized = tmp_path / "q4"
    made = lazarus_cli("quantize", "--model", source, "--bits", "4", "--group-size", "32", "--output", quantized)
    assert made.exit_code == 0, made.output
    plain = json.loads(lazarus_cli("models", "info", source, "--json").stdout)
    info = json.loads(lazarus_cli("models", "info", quantized, "--json").stdout)
    assert info["parameters"] == plain["parameters"]  # packed uint32 words unpacked; scales are not parameters
    assert "4-bit" in info["dtype"]
    assert info["created_by"] == f"lazarus quantize from {source}"
    table = lazarus_cli("models", "info", quantized)
    assert "created by" in table.stdout and "lazarus quantize" in table.stdout


def test_install_keeps_pips_already_satisfied_lines_out(lazarus_cli):
    """Reinstalling an installed package offline: pip's per-requirement lines become one count."""
    result = lazarus_cli("install", "click", "--no-index")
    assert result.exit_code == 0, result.output
    assert "Requirement already satisfied" not in result.output
    assert "(1 requirement already satisfied)" in result.output
