"""Data parallelism: `mlx.launch -n 2 -- lazarus train sft` (ring backend over localhost, the default
on a machine without CUDA) ends with the same weights as one process taking the same global batch;
so does grpo, whose ranks each generate the groups of their share of the prompts.

Tolerances (float32 on the CPU): sft adapters within 2e-5, grpo adapters within 1e-4 of the
one-process run after a few steps (sums over ranks add in another order, and a rank's rollout
batch is padded to other widths than the whole batch, so logits differ in the last bits).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.trainers.conftest import quiet_console, sft_config

BIN = Path(sys.executable).parent


def _free_port_pair() -> int:
    """A port p with p and p+1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65000:
            continue
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    pytest.skip("no two consecutive free ports on localhost")


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_whole_batch(tiny_llama, math_sft_data, tmp_path):
    import mlx.core as mx

    from lazarus_trainers.sft import SFTTrainer

    launcher = BIN / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed with this mlx")
    # batch_size is the global batch: each of the 2 ranks takes 4 of every 8 examples
    # the schedule is given: the CLI and the Python API may pick different defaults
    settings = dict(max_steps=6, batch_size=8, eval_interval=3, eval_batches=2, save_interval=3,
                    grad_accumulation=2, learning_rate=1e-3, lr_schedule="cosine")
    args = []
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    output = tmp_path / "two-ranks"
    command = [str(launcher), "-n", "2", "--starting-port", str(_free_port_pair()), "--",
               str(BIN / "lazarus"), "train", "sft", "--model", str(tiny_llama), "--data", str(math_sft_data),
               "--output", str(output), "--num-layers", "-1", "--rank", "4", "--max-seq-length", "96",
               "--log-interval", "1", *args]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on 2 ranks" in run.stdout + run.stderr

    single = SFTTrainer(sft_config(tiny_llama, math_sft_data, tmp_path / "one", **settings),
                        console=quiet_console()).train()

    two = mx.load(str(output / "adapters.safetensors"))
    one = mx.load(str(single.output / "adapters.safetensors"))
    assert set(two) == set(one)
    for key in one:
        np.testing.assert_allclose(np.array(two[key]), np.array(one[key]), atol=2e-5, err_msg=key)

    # rank 0 alone wrote the metrics: one row per step, and the losses are those of the whole batch
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (single.output / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [(r["split"], r["step"]) for r in single_rows]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in single_rows], rel=1e-4)
    assert [r["loss_items"] for r in rows if r["split"] == "train"] == [
        r["loss_items"] for r in single_rows if r["split"] == "train"]
    state = json.loads((output / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.slow
def test_two_rank_resume_equals_two_rank_straight_run(tiny_llama, math_sft_data, tmp_path):
    """With dropout each rank has its own random stream; a checkpoint keeps every rank's, so a
    resumed 2-rank run lands exactly where the straight 2-rank run does."""
    import mlx.core as mx

    launcher = BIN / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed with this mlx")

    def launch(*args):
        command = [str(launcher), "-n", "2", "--starting-port", str(_free_port_pair()), "--",
                   str(BIN / "lazarus"), "train", "sft", *args]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout + run.stderr

    straight = tmp_path / "straight"
    launch("--model", str(tiny_llama), "--data", str(math_sft_data), "--output", str(straight),
           "--num-layers", "-1", "--rank", "4", "--max-seq-length", "96", "--batch-size", "4",
           "--max-steps", "4", "--save-interval", "2", "--keep-checkpoints", "0", "--dropout", "0.3",
           "--learning-rate", "1e-3", "--eval-interval", "0", "--eval-batches", "1")
    state = json.loads((straight / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert len(state["rng_per_rank"]) == 2 and state["rng_per_rank"][0] != state["rng_per_rank"][1]

    resumed = tmp_path / "resumed"
    text = launch("--resume", str(straight / "checkpoints" / "step-00000002"), "--output", str(resumed))
    assert "at step 2/4" in text
    a = mx.load(str(straight / "adapters.safetensors"))
    b = mx.load(str(resumed / "adapters.safetensors"))
    for key in a:
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_grpo_ranks_generate_their_share_and_match_one_process(tiny_llama, math_sft_data, tmp_path):
    """Each of 2 ranks rolls out 2 of the 4 prompts (4 completions each); every row is seeded by its
    prompt and place in the group, so the two ranks together draw the 16 completions one process
    draws, the rewards and their group advantages agree, and so do the trained adapters."""
    import mlx.core as mx

    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer
    from tests.trainers.toy_rewards import register_toy_rewards

    launcher = BIN / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed with this mlx")
    settings = dict(model=str(tiny_llama), data=str(math_sft_data.parent / "prompts"), num_layers=-1, rank=4,
                    learning_rate=5e-3, batch_size=4, group_size=4, max_completion_length=8, temperature=1.0,
                    beta=0.04, num_iterations=2, max_steps=4, log_interval=1, save_interval=0,
                    reward=["prefer-token"])
    output = tmp_path / "two-ranks"
    config_file = tmp_path / "grpo.json"
    config_file.write_text(json.dumps({**settings, "output": str(output)}))
    command = [str(launcher), "-n", "2", "--starting-port", str(_free_port_pair()), "--",
               sys.executable, "-m", "tests.trainers.distributed_worker", "grpo", str(config_file)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "on 2 ranks (ring)" in run.stdout + run.stderr

    register_toy_rewards()
    settings["reward"] = tuple(settings["reward"])
    single = GRPOTrainer(GRPOConfig(**settings, output=str(tmp_path / "one")), console=quiet_console(),
                         progress=False).train()

    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    single_rows = [json.loads(line) for line in (single.output / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(single_rows) == 4
    for key in ("reward_mean", "reward_std", "completion_length_mean", "zero_spread_fraction"):
        # the same completions: rewards agree to the last bit of float32 sums
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in single_rows], abs=1e-6), key
    assert any(r["reward_std"] > 0 for r in rows)  # the groups had something to learn from
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in single_rows], rel=1e-3, abs=1e-6)
    two = mx.load(str(output / "adapters.safetensors"))
    one = mx.load(str(single.output / "adapters.safetensors"))
    assert max(float(mx.abs(one[k]).max()) for k in one if k.endswith("lora_b")) > 1e-3  # it trained (B starts at 0)
    for key in one:
        np.testing.assert_allclose(np.array(two[key]), np.array(one[key]), atol=1e-4, err_msg=key)


def test_a_row_samples_the_same_tokens_in_any_batch(tiny_llama):
    """Per-row seeds: a row's sampled completion does not depend on which rows share its batch,
    nor on when they finish (what lets ranks split a rollout), in the compiled and eager paths."""
    from lazarus import load_model
    from lazarus.generation import SamplingConfig, batch_generate

    model, tokenizer, _ = load_model(str(tiny_llama))
    prompts = [[1, 5, 9, 12], [1, 7], [1, 3, 3, 3, 3, 3, 8], [1, 2, 4]]
    seeds = [11, 12, 13, 14]
    sampling = SamplingConfig(temperature=1.0, seed=0)
    stops = list(range(0, 512, 23))  # common enough that rows finish at different steps

    def tokens(rows, row_seeds, compiled):
        import lazarus.generation.decode as generate

        before = generate._COMPILED_DECODE
        generate._COMPILED_DECODE = "1" if compiled else "0"
        try:
            return [r.token_ids for r in batch_generate(model, tokenizer, rows, max_tokens=24, sampling=sampling,
                                                        stop_token_ids=stops, row_seeds=row_seeds)]
        finally:
            generate._COMPILED_DECODE = before

    for compiled in (False, True):
        whole = tokens(prompts, seeds, compiled)
        assert len({len(t) for t in whole}) > 1  # rows left the batch at different steps
        assert tokens(prompts[:2], seeds[:2], compiled) + tokens(prompts[2:], seeds[2:], compiled) == whole
        assert [tokens([p], [s], compiled)[0] for p, s in zip(prompts, seeds, strict=True)] == whole
        assert tokens(prompts, [21, 12, 13, 14], compiled)[1:] == whole[1:]


def test_the_backend_mlx_launch_set_up_is_recognised():
    from lazarus.training.distributed import World, launched_backend

    assert launched_backend({"NCCL_HOST_IP": "10.0.0.1", "NCCL_PORT": "12345", "MLX_WORLD_SIZE": "2"}) == "nccl"
    assert launched_backend({"MLX_HOSTFILE": "[[\"127.0.0.1:5000\"], [\"127.0.0.1:5001\"]]", "MLX_RANK": "1"}) == "ring"
    assert launched_backend({"MLX_HOSTFILE": "x", "MLX_IBV_DEVICES": "[]"}) == "jaccl"
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
    assert launched_backend({}) == "any"
    import mlx.core as mx

    # NCCL reduces on the GPU's default stream; the CPU backends on the CPU stream
    assert World(size=2, backend="nccl").stream is None
    assert World(size=2, backend="ring").stream == mx.cpu


def test_doctor_reports_the_distributed_backends():
    run = subprocess.run([str(BIN / "lazarus"), "doctor", "--json"], capture_output=True, text=True, timeout=120)
    report = json.loads(run.stdout)["distributed"]
    assert set(report["backends"]) == {"ring", "mpi", "nccl", "jaccl"}
    assert report["backends"]["ring"] is True  # every MLX build has the ring backend
    assert report["launch_default"] == ("nccl" if json.loads(run.stdout)["cuda"] else "ring")


@pytest.mark.slow
def test_expert_training_on_two_ranks_equals_one_process(tmp_path):
    """`lazarus experts train` under mlx.launch: each rank runs half of the environment copies
    (each copy samples from its own key), and the expert ends where one process's does."""
    import mlx.core as mx

    launcher = BIN / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed with this mlx")
    args = ["experts", "train", "--expert", "gru", "--env", "reach", "--steps", "4", "--num-envs", "8",
            "--save-interval", "2"]
    one = subprocess.run([str(BIN / "lazarus"), *args, "--output", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(launcher), "-n", "2", "--starting-port", str(_free_port_pair()), "--",
                          str(BIN / "lazarus"), *args, "--output", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert (two.stdout + two.stderr).count("Done:") == 1  # rank 1 draws no progress and prints nothing
    a, b = mx.load(str(tmp_path / "one" / "expert.safetensors")), mx.load(str(tmp_path / "two" / "expert.safetensors"))
    for key in a:
        np.testing.assert_allclose(np.array(b[key]), np.array(a[key]), atol=1e-5, err_msg=key)
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["return"] for r in rows] == pytest.approx([r["return"] for r in single], rel=1e-5)
    assert [r["episode_length"] for r in rows] == pytest.approx([r["episode_length"] for r in single])


_ALL_SUM_SCRIPT = """
import json, sys
import mlx.core as mx
from lazarus.training import distributed
distributed.BUCKET_BYTES = 64  # a few small buckets, so the split and the rejoin are both exercised
world = distributed.init_world()
r = world.rank + 1
tree = (mx.array(1.5 * r), {"a": [mx.arange(10, dtype=mx.float32) * r, mx.ones((3, 4), dtype=mx.bfloat16) * r],
        "empty": {}, "n": mx.array([r, 2 * r], dtype=mx.int32)}, mx.arange(40, dtype=mx.float32).reshape(5, 8) * r)
s = world.all_sum(tree)
out = {"scalar": s[0].item(), "a0": s[1]["a"][0].tolist(), "a1": s[1]["a"][1].astype(mx.float32).tolist(),
       "a1_dtype": str(s[1]["a"][1].dtype), "empty": s[1]["empty"], "n": s[1]["n"].tolist(),
       "m": s[2].tolist(), "types": [type(s).__name__, type(s[1]["a"]).__name__]}
if world.is_main:
    print("RESULT " + json.dumps(out))
"""


def test_all_sum_of_a_tree_equals_the_sums_of_its_arrays(tmp_path):
    """World.all_sum sends a tree as flat buffers (per dtype, bucketed) and gives it back in its shape."""
    launcher = BIN / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed with this mlx")
    script = tmp_path / "all_sum.py"
    script.write_text(_ALL_SUM_SCRIPT)
    command = [str(launcher), "-n", "2", "--starting-port", str(_free_port_pair()), "--",
               str(BIN / "python"), str(script)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["scalar"] == 4.5  # 1.5 * (1 + 2)
    assert out["a0"] == [3.0 * i for i in range(10)]
    assert out["a1"] == [[3.0] * 4] * 3 and out["a1_dtype"] == "mlx.core.bfloat16"
    assert out["empty"] == {} and out["n"] == [3, 6]
    assert out["m"] == [[3.0 * (8 * i + j) for j in range(8)] for i in range(5)]
    assert out["types"] == ["tuple", "list"]
