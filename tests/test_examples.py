"""Every recipe in examples/recipes, run as docs/recipes.md says (`lazarus run`, on the embedded
model, with the math data it names) in fast settings, improves the metric it is about:
accuracy on held-out questions for the sft/dpo/grpo recipes, the answer token's probability at the
answer position for the logit-lens recipe. The fast settings only shorten the runs (`--set`).

sft-dpo and sft-grpo begin with the same two stages (eval "before", then sft: same options, same
data, so the same stage key); the sft-grpo run starts in an output holding the sft-dpo run's two,
so it skips them as `lazarus run` skips any finished stage of that key, and runs grpo and "after"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "examples" / "recipes"

#: per recipe: the --set overrides that make it fast (fewer steps, fewer test prompts)
FAST = {
    "sft-dpo.toml": ["sft.max-steps=300", "dpo.max-steps=10", "before.limit=40", "after.limit=40"],
    "sft-grpo.toml": ["sft.max-steps=300", "grpo.max-steps=3", "before.limit=40", "after.limit=40"],
    "lens.toml": ["sft.max-steps=150"],
}


def test_every_example_recipe_is_covered():
    assert sorted(p.name for p in RECIPES.glob("*.toml")) == sorted(FAST)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding `math/`, as `lazarus data generate math --output math --count 2000 --seed 0` writes it."""
    from click.testing import CliRunner

    from lazarus.cli import main

    root = tmp_path_factory.mktemp("examples")
    result = CliRunner().invoke(main, ["data", "generate", "math", "--output", str(root / "math"),
                                       "--count", "2000", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return root


def recipe_output(workdir: Path, name: str) -> Path:
    from lazarus.training.config import read_settings_file

    return workdir / read_settings_file(RECIPES / name, what="recipe")["output"]


def run_recipe(workdir: Path, name: str) -> tuple[Path, str]:
    """Run the recipe in ``workdir`` in its fast settings: (its output directory, what it printed)."""
    import os

    from click.testing import CliRunner

    from lazarus.cli import main

    args = ["run", str(RECIPES / name)]
    for override in FAST[name]:
        args += ["--set", override]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return recipe_output(workdir, name), result.output


@pytest.fixture(scope="module")
def sft_dpo_run(workdir):
    """The sft-dpo recipe's output directory, run once for the module."""
    return run_recipe(workdir, "sft-dpo.toml")[0]


def accuracy(run: Path, stage: str) -> float:
    return json.loads((run / stage / "summary.json").read_text())["accuracy"]


def train_rows(run: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "train"]


@pytest.mark.slow
def test_sft_dpo_recipe_raises_accuracy_and_dpo_moves_its_metrics(sft_dpo_run):
    run = sft_dpo_run
    before, after = accuracy(run, "before"), accuracy(run, "after")
    assert before <= 0.3 and after >= before + 0.3, (before, after)
    rows = train_rows(run, "dpo")
    assert rows[-1]["rewards/margin"] > rows[0]["rewards/margin"], rows


@pytest.mark.slow
def test_sft_grpo_recipe_raises_accuracy(workdir, sft_dpo_run):
    import shutil

    output = recipe_output(workdir, "sft-grpo.toml")
    for stage in ("before", "sft"):  # the sft-dpo run's first two stages, the same as this recipe's
        shutil.copytree(sft_dpo_run / stage, output / stage)
    run, printed = run_recipe(workdir, "sft-grpo.toml")
    printed = " ".join(printed.split())
    assert "stage before: unchanged, skipped" in printed and "stage sft: unchanged, skipped" in printed
    before, after = accuracy(run, "before"), accuracy(run, "after")
    assert before <= 0.3 and after >= before + 0.3, (before, after)
    assert all("reward_mean" in r for r in train_rows(run, "grpo"))


@pytest.mark.slow
def test_lens_recipe_shows_the_answer_emerge_after_training(workdir):
    run = run_recipe(workdir, "lens.toml")[0]

    def last_layer(stage: str) -> dict:
        result = json.loads((run / stage / "result.json").read_text())
        return result["positions"][-1]["layers"][-1]

    base, trained = last_layer("lens-base"), last_layer("lens-sft")
    # the answer's first token: not the base model's prediction, the trained model's top one
    assert trained["track_rank"] == 1 and base["track_rank"] > 1, (base, trained)
    assert trained["track_prob"] > base["track_prob"] + 0.3, (base, trained)
