"""Data safety of training runs (issue 19), through the CLI as a user runs them: what a run must never
do to the files a user already has. Each test hashes the user's files before and after."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

TRAIN = ("--num-layers", "-1", "--rank", "4", "--batch-size", "4", "--eval-batches", "2",
         "--log-interval", "1", "--max-seq-length", "96")


def tree_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (names in ``skip`` left out)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl read by a strict JSON reader (NaN and Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line]


@pytest.fixture
def trained(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    """A good run: 4 steps, checkpoints at 2 and 4, its final adapter."""
    out = tmp_path / "run"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", out,
                         "--max-steps", 4, "--save-interval", 2, "--learning-rate", "1e-3", *TRAIN)
    assert result.exit_code == 0, result.output
    return out


# -- item 2: divergence stops the run and keeps the good checkpoints -----------------------------
def test_divergence_stops_without_saving_or_pruning(trained, lazarus_cli):
    before = tree_hashes(trained, skip=("metrics.jsonl",))
    result = lazarus_cli("train", "sft", "--resume", trained, "--max-steps", 8, "--save-interval", 1,
                         "--keep-checkpoints", 1, "--learning-rate", "1e308")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: training diverged at step 5: ")
    assert "lower --learning-rate (now 1e+308)" in lines[-1]
    assert "step-00000004" in lines[-1]  # names the last good checkpoint
    assert "Traceback" not in result.output
    # nothing saved for the bad step, nothing pruned, the final adapter untouched
    assert tree_hashes(trained, skip=("metrics.jsonl",)) == before
    rows = strict_rows(trained / "metrics.jsonl")
    assert rows[-1]["step"] == 5  # the bad step is logged; what follows it never ran


def test_nan_loss_is_null_in_metrics_and_exit_2(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    out = tmp_path / "nan"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", out,
                         "--max-steps", 6, "--save-interval", 1, "--learning-rate", "1e30", *TRAIN)
    assert result.exit_code == 2, result.output
    assert "training diverged at step" in result.stderr
    rows = strict_rows(out / "metrics.jsonl")
    bad = rows[-1]
    assert bad["diverged"] is True and (bad["loss"] is None or bad["grad_norm"] is None)
    # every checkpoint left holds finite weights: the bad step was never saved
    from lazarus import checkpoints

    for step in (out / "checkpoints").glob("step-*"):
        weights = checkpoints.load("mlx-lm", step).weights
        assert all(math.isfinite(float(abs(v).max().item())) for v in weights.values()), step
    assert not (out / "adapters.safetensors").exists()  # no final adapter from a diverged run


def test_eval_loss_rise_stops_the_run(trained, tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    """Starting from a trained adapter (low first eval loss), a far too large learning rate sends the
    eval loss back up: the run stops at that eval with the rule in its message."""
    good = tmp_path / "good"
    assert lazarus_cli("train", "sft", "--model", tiny_llama, "--data", math_sft_data, "--output", good,
                       "--max-steps", 40, "--save-interval", 0, "--learning-rate", "1e-2", *TRAIN).exit_code == 0
    first = next(r["loss"] for r in strict_rows(good / "metrics.jsonl") if r["split"] == "eval")
    last = [r["loss"] for r in strict_rows(good / "metrics.jsonl") if r["split"] == "eval"][-1]
    assert last < first / 1.4
    out = tmp_path / "wrecked"
    result = lazarus_cli("train", "sft", "--model", tiny_llama, "--adapter", good, "--data", math_sft_data,
                         "--output", out, "--max-steps", 12, "--eval-interval", 2, "--save-interval", 2,
                         "--learning-rate", "3", "--max-grad-norm", "0", *TRAIN)
    assert result.exit_code == 2, result.output
    assert "training diverged at step" in result.stderr
    assert "rose from" in result.stderr and "--max-eval-loss-rise" in result.stderr


def test_eval_rise_rule_can_be_turned_off(tmp_path, tiny_llama, math_sft_data, lazarus_cli):
    from lazarus.errors import TrainingDiverged
    from lazarus_trainers.sft import SFTConfig, SFTTrainer

    trainer = SFTTrainer(SFTConfig(model=str(tiny_llama), data=str(math_sft_data), output=str(tmp_path / "x")))
    trainer._guard_eval(3, 1.3, 0.377, None)  # under max(1.5 x 0.377, 0.377 + 1.0)
    with pytest.raises(TrainingDiverged, match=r"at step 3: eval loss 1\.4000 rose from 0\.3770"):
        trainer._guard_eval(3, 1.4, 0.377, None)
    with pytest.raises(TrainingDiverged, match="the eval loss is nan"):
        trainer._guard_eval(0, float("nan"), None, None)
    trainer.config.max_eval_loss_rise = 0.0
    trainer._guard_eval(3, 100.0, 0.377, None)  # the rise check is off; non-finite still stops
