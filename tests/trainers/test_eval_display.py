"""`lazarus eval` as a user meets it: progress and the accuracy so far while it generates, the
README's command run twice, a --max-tokens default that fits the model's context (no warning), one
clean warning line when the user asks past it, and a recipe eval stage that prints one line."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def short_model(tiny_checkpoint):
    return tiny_checkpoint("llama", max_position_embeddings=96)


@pytest.fixture(scope="module")
def prompts(math_sft_data):
    return math_sft_data.parent / "prompts"


def test_eval_shows_progress_and_the_accuracy_so_far(lazarus_cli, tiny_llama, prompts, tmp_path):
    result = lazarus_cli("eval", "--model", tiny_llama, "--data", prompts, "--reward", "arithmetic", "--limit", "6",
                         "--batch-size", "2", "--max-tokens", "4", "--output", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("eval: ")]
    assert [line.split(",")[0] for line in progress] == ["eval: 2/6 prompts", "eval: 4/6 prompts", "eval: 6/6 prompts"]
    assert all("accuracy so far" in line for line in progress)
    assert "accuracy" in result.stdout


def test_the_readme_command_works_a_second_time(lazarus_cli, tiny_llama, prompts, tmp_path, monkeypatch):
    """Without --output, eval writes ./eval-results.jsonl and replaces it the next time (saying so);
    an --output the user named, or a file eval did not write, still needs --force."""
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", tiny_llama, "--data", prompts, "--reward", "arithmetic", "--limit", "2",
            "--max-tokens", "3"]
    first = lazarus_cli(*args)
    assert first.exit_code == 0, first.output
    again = lazarus_cli(*args)
    assert again.exit_code == 0, again.output
    assert "Note: replacing the results of an earlier eval in eval-results.jsonl" in again.stderr
    assert len((tmp_path / "eval-results.jsonl").read_text().splitlines()) == 2

    named = lazarus_cli(*args, "--output", "eval-results.jsonl")
    assert named.exit_code == 2 and "already exists; pass --force" in named.stderr
    (tmp_path / "eval-results.jsonl").write_text("my notes\n")
    foreign = lazarus_cli(*args)
    assert foreign.exit_code == 2 and "--force" in foreign.stderr
    assert (tmp_path / "eval-results.jsonl").read_text() == "my notes\n"


def test_default_max_tokens_fits_the_context(lazarus_cli, short_model, prompts, tmp_path):
    result = lazarus_cli("eval", "--model", short_model, "--data", prompts, "--reward", "arithmetic", "--limit", "3",
                         "--output", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    fits = int(result.stdout.split("(at most ")[1].split()[0])
    assert 0 < fits < 96  # what is left of the 96-token context after the longest prompt
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert max(r["completion_tokens"] for r in rows) <= fits


def test_asking_past_the_context_is_one_clean_warning(lazarus_cli, short_model, prompts, tmp_path):
    result = lazarus_cli("eval", "--model", short_model, "--data", prompts, "--reward", "arithmetic", "--limit", "5",
                         "--batch-size", "2", "--max-tokens", "100", "--output", tmp_path / "r.jsonl")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 1 and warned[0].startswith("Warning: --max-tokens 100 after a"), result.stderr
    assert "ContextLengthWarning" not in result.stderr and ".py:" not in result.stderr


def test_a_recipe_eval_stage_prints_one_line_not_its_json(lazarus_cli, tiny_llama, prompts, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
model = "{tiny_llama}"
output = "{tmp_path / 'run'}"

[[stage]]
eval = "arithmetic"
data = "{prompts / 'test.jsonl'}"
limit = 3
max-tokens = 3
""")
    result = lazarus_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert '"accuracy_ci95"' not in result.output and "{" not in result.stdout
    line = next(line for line in result.output.splitlines() if line.startswith("accuracy "))
    assert "95% CI" in line and "mean reward" in line
    summary = json.loads((tmp_path / "run" / "eval-arithmetic" / "summary.json").read_text())
    assert summary["rows"] == 3  # the stage still keeps its numbers
