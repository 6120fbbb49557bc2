"""Ctrl-C (SIGINT) during `lazarus train sft` saves a resumable checkpoint, prints the command that
resumes it, and that command continues exactly where the run stopped."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console, sft_config

LAZARUS = str(Path(sys.executable).parent / "lazarus")


def _train_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in rows if r["split"] == "train"]


@pytest.mark.slow
def test_sigint_saves_a_resumable_checkpoint(tiny_llama, math_sft_data, tmp_path):
    import mlx.core as mx

    from lazarus_trainers.sft import SFTTrainer

    output = tmp_path / "run"
    args = ["--model", str(tiny_llama), "--data", str(math_sft_data), "--num-layers", "-1", "--rank", "4",
            "--learning-rate", "1e-3", "--lr-schedule", "constant", "--warmup-steps", "0", "--batch-size", "4", "--log-interval", "1", "--eval-interval", "0",
            "--save-interval", "2", "--max-seq-length", "96", "--eval-batches", "1"]
    proc = subprocess.Popen([LAZARUS, "train", "sft", *args, "--output", str(output), "--max-steps", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_train_rows(output / "metrics.jsonl")) < 5:  # a few steps in, past a periodic save
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = stdout + stderr
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    match = re.search(r"Resume with:\n  (lazarus train sft --resume (\S+))\n", text)
    assert match, text
    checkpoint = Path(match.group(2))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    stopped_at = state["step"]
    assert stopped_at >= 5 and checkpoint.name == f"step-{stopped_at:08d}"
    assert (output / "checkpoints" / "latest").read_text().strip() == checkpoint.name
    assert (checkpoint / "adapters.safetensors").is_file() and (checkpoint / "optimizer.safetensors").is_file()
    assert not list((output / "checkpoints").glob(".*"))  # no temporary leftovers

    # the printed command resumes (given a nearer end here) and lands where a straight run does
    end = stopped_at + 3
    command = shlex.split(match.group(1))
    resumed = subprocess.run([LAZARUS, *command[1:], "--max-steps", str(end)], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from {checkpoint} at step {stopped_at}" in resumed.stdout + resumed.stderr

    straight = sft_config(tiny_llama, math_sft_data, tmp_path / "straight", learning_rate=1e-3,
                          max_steps=end, save_interval=2, eval_batches=1)
    SFTTrainer(straight, console=quiet_console()).train()
    a = mx.load(str(tmp_path / "straight" / "adapters.safetensors"))
    b = mx.load(str(output / "adapters.safetensors"))
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)
    steps = [r["step"] for r in _train_rows(output / "metrics.jsonl")]
    assert steps == list(range(1, end + 1))  # the resumed run replaced rows past the checkpoint
