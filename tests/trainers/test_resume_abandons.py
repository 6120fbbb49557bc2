"""Resuming from an older checkpoint sets the abandoned run's later checkpoints aside (and says so),
so that a later `--resume OUTPUT` continues the new run, never the abandoned one; nothing is deleted."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lazarus.cli import main
from lazarus.training import checkpoint as ckpt


def _train(*args):
    return CliRunner().invoke(main, ["train", "sft", *map(str, args)], catch_exceptions=False)


def test_resuming_an_older_checkpoint_sets_later_ones_aside(tiny_llama, math_sft_data, tmp_path):
    out = tmp_path / "run"
    first = _train("--model", tiny_llama, "--data", math_sft_data, "--output", out, "--max-steps", "4",
                   "--save-interval", "1", "--keep-checkpoints", "0", "--num-layers", "-1", "--rank", "2",
                   "--max-seq-length", "64", "--eval-batches", "1", "--seed", "1")
    assert first.exit_code == 0, first.output
    root = out / "checkpoints"
    abandoned_state = (root / "step-00000004" / "trainer_state.json").read_text()

    # go back to step 2 and train to step 3 with another learning rate: steps 3 and 4 of the first run are abandoned
    second = _train("--resume", root / "step-00000002", "--max-steps", "3", "--learning-rate", "1e-3")
    assert second.exit_code == 0, second.output
    assert "moved the abandoned run's later checkpoints (step-00000003, step-00000004)" in " ".join(second.output.split())

    aside = root / "abandoned-after-step-00000002"
    assert sorted(p.name for p in aside.iterdir()) == ["step-00000003", "step-00000004"]
    assert (aside / "step-00000004" / "trainer_state.json").read_text() == abandoned_state  # nothing lost
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000001", "step-00000002", "step-00000003"]

    # "the latest checkpoint" is now the new run's step 3
    latest = ckpt.find_checkpoint(out)
    assert latest == root / "step-00000003"
    assert json.loads((latest / "trainer_state.json").read_text())["config"]["learning_rate"] == 1e-3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 3
