"""GRPO step time split into generation / scoring / update, and rollout tokens/s: Lazarus vs
mlx-lm-lora's ``train_grpo`` (when importable), on the same checkpoint, prompts and settings.

Both engines: the math generator's prompts, ``--batch-size`` prompts × ``--group-size`` completions
per step, at most ``--max-completion-length`` tokens, temperature 1 (top-k off in both), LoRA of the
same rank/scale/keys/blocks, AdamW at the same learning rate, KL ``beta`` to the base (Lazarus: the
adapter switched off; mlx-lm-lora: the reference model it is given, here a second copy of the
base), an exact-answer reward (``arithmetic``; for mlx-lm-lora the same function wrapped in its
signature). Lazarus's split is read from metrics.jsonl (``seconds_generation``,
``seconds_scoring`` = rewards + reference/old log-probs, ``seconds_update``); mlx-lm-lora's from
timers wrapped around its module-level ``generate_grpo`` and ``_rollout_rewards`` (update = the
rest of the step). The first ``--warmup`` steps (compilation) are left out of both. Each engine runs in
a process of its own, so its peak memory (``mx.get_peak_memory``) is its own; the ratios printed are
Lazarus / mlx-lm-lora for step time (goal <= 0.3) and peak memory (goal <= 1.0).

mlx-lm-lora is not a dependency; ``pip install mlx-lm-lora`` (or ``--target DIR --no-deps`` and
``PYTHONPATH=DIR``) to compare.

    python benchmarks/grpo.py --size tiny --steps 12
    python benchmarks/grpo.py --size small --steps 8 --group-size 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import bench_checkpoint, math_data, mlx_lm_lora_policy  # noqa: E402


def run_lazarus(model: Path, data: Path, output: Path, args) -> dict:
    import io

    import mlx.core as mx
    from rich.console import Console

    from lazarus_trainers.grpo import GRPOConfig, GRPOTrainer

    config = GRPOConfig(model=str(model), data=str(data), output=str(output), overwrite=True, num_layers=-1,
                        rank=args.rank, lora_targets=tuple(args.keys.split(",")), learning_rate=args.learning_rate,
                        batch_size=args.batch_size, group_size=args.group_size,
                        max_completion_length=args.max_completion_length, temperature=1.0, beta=args.beta,
                        max_steps=args.steps, log_interval=1, save_interval=0, max_grad_norm=0.0,
                        reward=("arithmetic",), seed=0)
    mx.reset_peak_memory()
    result = GRPOTrainer(config, console=Console(file=io.StringIO()), progress=False).train()
    rows = [r for r in result.metrics if r["split"] == "train"][args.warmup:]
    n = len(rows)
    gen = sum(r["seconds_generation"] for r in rows) / n
    score = sum(r["seconds_scoring"] for r in rows) / n
    update = sum(r["seconds_update"] for r in rows) / n
    tokens = sum(r["completion_length_mean"] * args.batch_size * args.group_size for r in rows)
    return {"step_seconds": gen + score + update, "generation": gen, "scoring": score, "update": update,
            "rollout_tokens_per_second": tokens / (gen * n), "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "reward_mean": sum(r["reward_mean"] for r in rows) / n}


def run_mlx_lm_lora(model: Path, data: Path, output: Path, args) -> dict:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm_lora.trainer import grpo_trainer

    import lazarus
    from lazarus.data.records import load_splits
    from lazarus_trainers.rewards import arithmetic

    _, tokenizer, _ = lazarus.load_model(str(model))
    records = load_splits(data, format="prompt").train.records
    dataset = [(tokenizer.encode(r.prompt), tokenizer.encode(str(r.answer), add_special_tokens=False), r.prompt,
                str(r.answer)) for r in records]

    def arithmetic_reward(prompts, completions, answer, types=None):
        return arithmetic(prompts, completions, [{"answer": a} for a in answer])

    timers = {"generation": [], "scoring": [], "steps": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            if name == "generation":
                mx.eval([c for c in out[0]])
            timers[name].append(time.perf_counter() - start)
            return out
        return wrapper

    originals = {name: getattr(grpo_trainer, name) for name in ("generate_grpo", "_rollout_rewards")}
    grpo_trainer.generate_grpo = timed("generation", originals["generate_grpo"])
    grpo_trainer._rollout_rewards = timed("scoring", originals["_rollout_rewards"])

    class Collect(TrainingCallback):
        def on_train_loss_report(self, info):
            timers["steps"].append(info)

    mx.reset_peak_memory()
    net, mlx_tokenizer, optimizer = mlx_lm_lora_policy(model, keys=args.keys, rank=args.rank, num_layers=-1,
                                                       learning_rate=args.learning_rate)
    reference, _ = load(str(model))
    reference.freeze()
    training_args = grpo_trainer.GRPOTrainingArgs(
        batch_size=args.batch_size, iters=args.steps, val_batches=0, steps_per_report=1, steps_per_eval=10**9,
        steps_per_save=10**9, max_seq_length=512, adapter_file=str(output / "adapters.safetensors"),
        group_size=args.group_size, beta=args.beta, epsilon=0.2, max_completion_length=args.max_completion_length,
        temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)
    output.mkdir(parents=True, exist_ok=True)
    info = mx.device_info()
    if "max_recommended_working_set_size" not in info:
        patched = {**info, "max_recommended_working_set_size": info.get("memory_size", 0)}
        mx.device_info = lambda: patched
    try:
        grpo_trainer.train_grpo(net, reference, mlx_tokenizer, optimizer,
                                dataset, None, reward_funcs=[arithmetic_reward], args=training_args,
                                training_callback=Collect(), end_answer_token="")
    finally:
        for name, fn in originals.items():
            setattr(grpo_trainer, name, fn)
    reports = timers["steps"][args.warmup:]
    step_seconds = [1.0 / r["iterations_per_second"] for r in reports]
    n = len(reports)
    gen = sum(timers["generation"][args.warmup:]) / n
    score = sum(timers["scoring"][args.warmup:]) / n
    step = sum(step_seconds) / n
    return {"step_seconds": step, "generation": gen, "scoring": score, "update": max(step - gen - score, 0.0),
            "rollout_tokens_per_second": None, "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "reward_mean": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny",
                        help="tiny: 2 layers, hidden 64; small: ~75M llama")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out (compilation)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--keys", default="q_proj,v_proj")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--engines", default="lazarus,mlx-lm-lora")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lazarus-bench-grpo"))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    import lazarus  # noqa: F401, I001  (first: on Linux it binds MLX's CPU matmuls to OpenBLAS, for both engines)
    import mlx.core as mx

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    model, data = bench_checkpoint(cache, args.size), math_data(cache, args.examples, "prompts")
    engines = {"lazarus": run_lazarus, "mlx-lm-lora": run_mlx_lm_lora}
    wanted = [e for e in args.engines.split(",") if e in engines]
    if "mlx-lm-lora" in wanted:
        try:
            import mlx_lm_lora  # noqa: F401
        except ImportError as exc:
            print(f"mlx-lm-lora is not importable ({exc}); measuring Lazarus only", file=sys.stderr)
            wanted.remove("mlx-lm-lora")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in wanted:
            if len(wanted) == 1:
                results[name] = engines[name](model, data, Path(work) / name, args)
            else:  # each engine in a process of its own, so that peak memory is its own
                import subprocess

                out = Path(work) / f"{name}.json"
                given = sys.argv[1:]
                argv = [a for i, a in enumerate(given) if not a.startswith(("--engines", "--json"))
                        and (i == 0 or given[i - 1] not in ("--engines", "--json"))]
                subprocess.run([sys.executable, __file__, *argv, "--engines", name, "--json", str(out)], check=True)
                results[name] = json.loads(out.read_text())["results"][name]
            print(f"{name}: {results[name]}", file=sys.stderr)
    print(f"GRPO, llama {args.size}, {args.batch_size} prompts × {args.group_size} completions, <= "
          f"{args.max_completion_length} tokens, beta {args.beta}, rank {args.rank} ({args.keys}), {args.steps} "
          f"steps (first {args.warmup} dropped), {platform.machine()} {mx.default_device()}")
    print(f"{'engine':<14}{'s/step':>9}{'gen':>9}{'score':>9}{'update':>9}{'rollout tok/s':>15}{'peak GB':>9}"
          "   (peak: mx.get_peak_memory of the engine's own process)")
    for name, r in results.items():
        tps = f"{r['rollout_tokens_per_second']:.0f}" if r["rollout_tokens_per_second"] else "-"
        print(f"{name:<14}{r['step_seconds']:>9.3f}{r['generation']:>9.3f}{r['scoring']:>9.3f}{r['update']:>9.3f}"
              f"{tps:>15}{r['peak_memory_gb']:>9.3f}")
    ratio = {}
    if len(results) == 2:
        ratio = {"step_time_ratio": results["lazarus"]["step_seconds"] / results["mlx-lm-lora"]["step_seconds"],
                 "peak_memory_ratio": results["lazarus"]["peak_memory_gb"] / results["mlx-lm-lora"]["peak_memory_gb"]}
        print(f"step time ratio (Lazarus / mlx-lm-lora): {ratio['step_time_ratio']:.2f}x  (goal <= 0.3); "
              f"peak memory ratio: {ratio['peak_memory_ratio']:.2f}x  (goal <= 1.0)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, **ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
