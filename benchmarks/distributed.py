"""Data parallelism with ``mlx.launch``: N ranks against one process, for equality and for speed.

``verify``: every trainer (sft, dpo, orpo, dual-reward, grpo, ppo) runs once as a plain process and
once under ``mlx.launch -n N`` with the same global batch and seed; the final adapters are compared
(largest absolute difference, and that difference over the largest weight), with the losses of
every step. On a machine with CUDA ``mlx.launch`` picks NCCL (one GPU per rank), elsewhere ring.

``bench``: LoRA SFT tokens/s and GRPO steps/s at 1 and N GPUs (N ranks of ``mlx.launch``), and the
peak memory of every rank. Weak scaling keeps the batch *per GPU* fixed (the global batch grows
with N, the usual data-parallel throughput measure); strong scaling keeps the global batch and
splits it. ``--scaling both`` (default) runs 1 GPU at the per-GPU batch, 1 GPU at N times it, and
N GPUs at N times it, and reports both ratios: SFT tokens/s, GRPO rollouts/s (prompts × group per
second; steps/s at the same global batch). The first ``--warmup`` logged windows (compilation) are
left out; best and median of the rest are printed.

    python benchmarks/distributed.py verify --size tiny --dtypes float32            # CPU, ring
    MLX_ENABLE_TF32=0 python benchmarks/distributed.py verify --size small --dtypes float32,bfloat16  # GPUs
    python benchmarks/distributed.py bench --size 1b --dtype bfloat16 --json out.json

``worker`` is what each rank runs (one trainer from a JSON file of settings); it registers a
``token-share`` reward (share of completion tokens whose id is a multiple of 4: random models get
rewards that differ within a group) so that the RL trainers learn something from a random model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import bench_checkpoint, math_data  # noqa: E402

HERE = Path(__file__).resolve()
TRAINERS = ("sft", "dpo", "orpo", "dual-reward", "grpo", "ppo")
RESULT_MARK = "@@distributed-bench "


# -- what every rank runs -----------------------------------------------------------------------------
def token_share(prompts, completions, records):
    """Share of the completion's tokens whose id is a multiple of 4 (about 1/4 at random)."""
    return [sum(t % 4 == 0 for t in r["completion_ids"]) / max(1, len(r["completion_ids"])) for r in records]


def register_token_share() -> None:
    import types

    import lazarus
    from lazarus.plugins import get_registry
    from lazarus.specs import RewardFunctionSpec

    registry = get_registry()
    if "token-share" in registry.names("reward-function"):
        return
    plugin = types.ModuleType("distributed_bench_rewards")

    @lazarus.hookimpl
    def register_reward_functions(register):
        register(RewardFunctionSpec(name="token-share", entry="distributed:token_share"))

    plugin.register_reward_functions = register_reward_functions
    registry.add_plugin(plugin, "distributed-bench-rewards")


def worker(name: str, settings_file: str) -> None:
    import io

    import mlx.core as mx
    from rich.console import Console

    from lazarus.plugins import get_registry
    from lazarus.training.distributed import init_world

    register_token_share()
    settings = json.loads(Path(settings_file).read_text())
    trainer_cls = get_registry().get("trainer", name).load()
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    world = init_world()
    mx.reset_peak_memory()
    start = time.perf_counter()
    trainer = trainer_cls(trainer_cls.config_class(**values), world=world, console=Console(file=io.StringIO()),
                          progress=False)
    result = trainer.train()
    seconds = time.perf_counter() - start
    # every rank reports its own peak memory on stdout (mlx.launch relays it); rank 0 adds the rows
    report = {"rank": world.rank, "size": world.size, "backend": world.backend, "device": str(mx.default_device()),
              "peak_memory_gb": mx.get_peak_memory() / 1e9, "seconds": seconds}
    if world.is_main:
        report["rows"] = result.metrics
    print(RESULT_MARK + json.dumps(report), flush=True)


# -- launching ------------------------------------------------------------------------------------------
def _free_port() -> int:
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 60000:
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def launch(name: str, settings: dict, ranks: int, workdir: Path, timeout: float, launch_args: str = "") -> dict:
    """Run ``name`` with ``settings`` on ``ranks`` ranks (1: a plain process); the rank reports."""
    settings_file = workdir / f"{Path(settings['output']).name}.json"
    settings_file.write_text(json.dumps(settings))
    command = [sys.executable, str(HERE), "worker", name, str(settings_file)]
    if ranks > 1:
        launcher = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
        port = _free_port()
        command = [launcher, "-n", str(ranks), "--starting-port", str(port), "--nccl-port", str(port),
                   *launch_args.split(), "--", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - start
    reports = [json.loads(line[len(RESULT_MARK):]) for line in run.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if run.returncode != 0 or len(reports) != ranks:
        tail = (run.stdout + run.stderr)[-3000:]
        raise RuntimeError(f"{name} on {ranks} rank(s) failed (exit {run.returncode}):\n{tail}")
    reports.sort(key=lambda r: r["rank"])
    return {"wall_seconds": wall, "ranks": reports, "rows": reports[0]["rows"]}


# -- verify -----------------------------------------------------------------------------------------------
def two_class_data(root: Path) -> Path:
    import random

    out = root / "two-classes"
    if (out / "train.jsonl").is_file():
        return out
    rng = random.Random(0)
    records = []
    for i in range(96):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        if i % 2:
            records.append({"prompt": f"What is {a} + {b}?", "completion": f" {a + b}", "label": "add"})
        else:
            records.append({"prompt": f"Name the colour of item {a}.", "completion": " red", "label": "colour"})
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def verify_settings(name: str, model: Path, cache: Path, dtype: str, args) -> dict:
    common = dict(model=str(model), num_layers=-1, rank=8, learning_rate=args.learning_rate, lr_schedule="constant",
                  warmup_steps=0, batch_size=args.batch_size, max_steps=args.steps, log_interval=1,
                  save_interval=0, eval_interval=0, max_seq_length=128, seed=0, overwrite=True)
    if name == "sft":
        return {**common, "data": str(math_data(cache, 200, "sft")), "grad_accumulation": 2}
    if name in ("dpo", "orpo"):
        return {**common, "data": str(math_data(cache, 200, "preference"))}
    if name == "dual-reward":
        return {**common, "data": str(two_class_data(cache)), "classifier_targets": ["add=c", "colour=a"],
                "classifier_layer": -2}
    rl = dict(data=str(math_data(cache, 200, "prompts")), reward=["token-share"], max_completion_length=16,
              temperature=1.0, num_iterations=2)
    if name == "grpo":
        return {**common, **rl, "group_size": 4, "beta": 0.04}
    return {**common, **rl, "group_size": 1, "beta": 0.05}


def compare(one: Path, many: Path) -> dict:
    import mlx.core as mx

    a, b = mx.load(str(one / "adapters.safetensors")), mx.load(str(many / "adapters.safetensors"))
    if set(a) != set(b):
        return {"same_keys": False}
    diff = max(float(mx.abs(a[k].astype(mx.float32) - b[k].astype(mx.float32)).max()) for k in a)
    scale = max(float(mx.abs(a[k].astype(mx.float32)).max()) for k in a)
    moved = max(float(mx.abs(a[k].astype(mx.float32)).max()) for k in a if k.endswith("lora_b"))
    return {"same_keys": True, "max_abs_diff": diff, "max_abs_weight": scale, "relative": diff / max(scale, 1e-12),
            "max_lora_b": moved}


def cmd_verify(args) -> dict:
    import mlx.core as mx

    cache = Path(args.cache_dir)
    results = []
    deadline = time.perf_counter() + args.budget
    for name in args.trainers.split(","):
        for dtype in args.dtypes.split(","):
            model = bench_checkpoint(cache, args.size, dtype)
            if time.perf_counter() > deadline:
                print(f"skipped {name} {dtype}: --budget {args.budget:.0f} s spent", flush=True)
                continue
            work = Path(tempfile.mkdtemp(prefix=f"verify-{name}-{dtype}-", dir=cache))
            settings = verify_settings(name, model, cache, dtype, args)
            try:
                single = launch(name, {**settings, "output": str(work / "one")}, 1, work, args.timeout)
                many = launch(name, {**settings, "output": str(work / "many")}, args.ranks, work, args.timeout,
                              args.launch_args)
            except Exception as exc:  # report and go on with the next trainer
                print(f"{name} {dtype}: FAILED {exc}", flush=True)
                results.append({"trainer": name, "dtype": dtype, "error": str(exc)[-2000:]})
                continue
            losses = [(r["loss"], s["loss"]) for r, s in zip(single["rows"], many["rows"], strict=False)
                      if r["split"] == "train"]
            loss_rel = max(abs(a - b) / max(abs(a), 1e-6) for a, b in losses)
            row = {"trainer": name, "dtype": dtype, **compare(work / "one", work / "many"),
                   "max_loss_relative_diff": loss_rel, "backend": many["ranks"][0]["backend"],
                   "reward_mean": [(r.get("reward_mean"), s.get("reward_mean")) for r, s in
                                   zip(single["rows"], many["rows"], strict=False) if "reward_mean" in r],
                   "loss": losses, "grad_norm": [(r.get("grad_norm"), s.get("grad_norm")) for r, s in
                                                 zip(single["rows"], many["rows"], strict=False) if r["split"] == "train"],
                   "tf32": os.environ.get("MLX_ENABLE_TF32", "1"),
                   "wall_seconds": [single["wall_seconds"], many["wall_seconds"]]}
            results.append(row)
            _save(args, {"verify": results})
            print(f"{name:12s} {dtype:9s} {row['backend']}: adapter max |diff| {row.get('max_abs_diff', 0):.2e} "
                  f"(largest weight {row.get('max_abs_weight', 0):.3f}, relative {row.get('relative', 0):.1e}; "
                  f"largest lora_b {row.get('max_lora_b', 0):.1e}), "
                  f"loss rel. diff {loss_rel:.1e}; wall {single['wall_seconds']:.0f} s / "
                  f"{many['wall_seconds']:.0f} s", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    return {"verify": results, "mlx": mx.__version__}


# -- bench ---------------------------------------------------------------------------------------------------
def _save(args, result: dict) -> None:
    """Write what is measured so far (a run cut short by a time limit keeps its figures)."""
    if args.json:
        Path(args.json).write_text(json.dumps({**args.meta, **result}, indent=2))


def _stats(values: list[float]) -> dict:
    import statistics

    return {"best": max(values), "median": statistics.median(values), "n": len(values)} if values else {}


def cmd_bench(args) -> dict:
    import mlx.core as mx

    cache = Path(args.cache_dir)
    model = bench_checkpoint(cache, args.size, args.dtype)
    out = {"model": f"llama-{args.size}-{args.dtype}", "scaling": args.scaling, "runs": []}
    common = dict(model=str(model), num_layers=-1, rank=8, lora_targets=["q_proj", "v_proj"], learning_rate=1e-4,
                  save_interval=0, eval_interval=0, seed=0, overwrite=True, max_grad_norm=0.0)
    n = args.ranks
    plan = {"weak": [(1, 1), (n, n)], "strong": [(1, n), (n, n)], "both": [(1, 1), (1, n), (n, n)]}[args.scaling]
    plan = [(1, 1)] if n == 1 else plan  # --ranks 1: the one-GPU baseline alone
    for which in args.which.split(","):
        for ranks, batches in plan:
            per_gpu = args.sft_batch if which == "sft" else args.grpo_prompts
            batch = per_gpu * batches
            work = Path(tempfile.mkdtemp(prefix=f"bench-{which}-{ranks}-", dir=cache))
            if which == "sft":
                settings = {**common, "data": str(math_data(cache, 4000, "sft")), "batch_size": batch,
                            "max_steps": args.sft_steps, "log_interval": args.sft_log, "max_seq_length": 256,
                            "output": str(work / "out")}
            else:
                settings = {**common, "data": str(math_data(cache, 1000, "prompts")), "batch_size": batch,
                            "group_size": args.group_size, "max_completion_length": args.max_completion_length,
                            "temperature": 1.0, "beta": 0.04, "reward": ["token-share"], "max_steps": args.grpo_steps,
                            "log_interval": 1, "output": str(work / "out")}
            try:
                run = launch("sft" if which == "sft" else "grpo", settings, ranks, work, args.timeout, args.launch_args)
            except Exception as exc:
                print(f"{which} on {ranks} GPU(s): FAILED {exc}", flush=True)
                out["runs"].append({"trainer": which, "ranks": ranks, "error": str(exc)[-2000:]})
                continue
            rows = [r for r in run["rows"] if r["split"] == "train"][args.warmup:]
            entry = {"trainer": which, "ranks": ranks, "global_batch": batch,
                     "peak_memory_gb": [r["peak_memory_gb"] for r in run["ranks"]],
                     "backend": run["ranks"][0]["backend"], "wall_seconds": run["wall_seconds"]}
            if which == "sft":
                entry["tokens_per_second"] = _stats([r["tokens_per_second"] for r in rows])
            else:
                entry["steps_per_second"] = _stats([1.0 / r["seconds"] for r in rows])  # one step per row
                entry["rollouts_per_second"] = _stats([batch * args.group_size / r["seconds"] for r in rows])
                entry["seconds_generation_median"] = _stats([r["seconds_generation"] for r in rows]).get("median")
            out["runs"].append(entry)
            _save(args, out)
            print(json.dumps(entry), flush=True)
            shutil.rmtree(work, ignore_errors=True)
    per_gpu = {"sft": args.sft_batch, "grpo": args.grpo_prompts}
    for which, key in (("sft", "tokens_per_second"), ("grpo", "rollouts_per_second")):
        done = {(r["ranks"], r["global_batch"]): r[key]["median"] for r in out["runs"]
                if r["trainer"] == which and r.get(key)}
        top = (n, per_gpu[which] * n)
        for kind, base in (("weak", (1, per_gpu[which])), ("strong", (1, per_gpu[which] * n))):
            if base in done and top in done:
                out[f"{which}_{kind}_speedup"] = done[top] / done[base]
                print(f"{which} ({kind} scaling): {key} median {done[base]:.1f} at 1 GPU (global batch "
                      f"{base[1]}), {done[top]:.1f} at {n} (global batch {top[1]}) -> "
                      f"{out[f'{which}_{kind}_speedup']:.2f}x", flush=True)
    out["mlx"] = mx.__version__
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("verify", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--size", choices=("tiny", "small", "1b"), default="tiny" if name == "verify" else "1b")
        p.add_argument("--ranks", type=int, default=2)
        p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lazarus-bench-distributed"))
        p.add_argument("--timeout", type=float, default=300, help="seconds per launched run")
        p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        p.add_argument("--launch-args", default="", help="more mlx.launch options, e.g. '--backend ring'")
    v = sub.choices["verify"]
    v.add_argument("--trainers", default=",".join(TRAINERS))
    v.add_argument("--dtypes", default="float32")
    v.add_argument("--steps", type=int, default=4)
    v.add_argument("--batch-size", type=int, default=8, help="global batch (prompts for grpo/ppo)")
    v.add_argument("--learning-rate", type=float, default=1e-4,
                   help="higher rates make the random models diverge, and a diverging run magnifies rounding")
    v.add_argument("--budget", type=float, default=1e9, help="start no new trainer after this many seconds")
    b = sub.choices["bench"]
    b.add_argument("--which", default="sft,grpo")
    b.add_argument("--dtype", default="bfloat16")
    b.add_argument("--scaling", choices=("weak", "strong", "both"), default="both")
    b.add_argument("--sft-batch", type=int, default=16, help="SFT examples per GPU (weak) or per GPU at --ranks")
    b.add_argument("--sft-steps", type=int, default=40)
    b.add_argument("--sft-log", type=int, default=5)
    b.add_argument("--grpo-prompts", type=int, default=4, help="GRPO prompts per GPU")
    b.add_argument("--group-size", type=int, default=8)
    b.add_argument("--max-completion-length", type=int, default=64)
    b.add_argument("--grpo-steps", type=int, default=8)
    b.add_argument("--warmup", type=int, default=2, help="logged windows left out (compilation)")
    args = parser.parse_args()
    import mlx.core as mx

    args.meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mlx": mx.__version__,
                 "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
                 "device": str(mx.default_device()), "cuda": bool(getattr(mx, "cuda", None) and mx.cuda.is_available())}
    if args.meta["cuda"]:
        args.meta["gpus"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip().splitlines()
    result = cmd_verify(args) if args.command == "verify" else cmd_bench(args)
    _save(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
