"""LoRA training speed and memory: Lazarus vs mlx-lm (SFT) or mlx-lm-lora (DPO), in one run.

``--trainer sft`` (default): Lazarus's `sft` trainer vs mlx-lm (`mlx_lm.tuner.trainer.train`).
``--trainer dpo``: Lazarus's `dpo` (reference = the adapter switched off, and once more with
``--ref-model``, a second copy, for the memory contrast) vs mlx-lm-lora's ``train_dpo`` with its
reference model (a second copy, as mlx-lm-lora loads it), on the same token sequences; figures are
pairs/s and peak memory. mlx-lm-lora is not a dependency: install it where the benchmark can import
it (``pip install --target DIR --no-deps mlx-lm-lora tqdm`` and ``PYTHONPATH=DIR``).

Both engines train the same checkpoint on the same token sequences (tokenised once, by Lazarus; the
prompt is masked in both), with the same LoRA rank, scale, target layers and blocks, the same batch
size, AdamW at the same learning rate without weight decay, no gradient clipping (mlx-lm has
none), no evaluation and no checkpoints inside the timed part. What differs is each engine's own
batching (Lazarus pads to a multiple of 8 within length-sorted windows; mlx-lm sorts the whole set
and pads to 1 + a multiple of 32), step compilation and loop.

Figures:
- loss tokens/s: completion tokens (the ones carrying loss) per second of training steps, after
  dropping the first report window (compilation);
- peak memory: ``mx.get_peak_memory()`` over the engine's run (reset before each);
- eval loss (SFT): after training, one evaluator (token-weighted mean cross-entropy on the
  completion tokens) runs each engine's trained model on the same held-out problems (a second
  draw of math problems, seed 1), so both engines are judged on the same tokens, not on the last
  training batches they happened to draw.

The ratio columns are Lazarus / mlx-lm (above 1.0 means Lazarus is faster / uses less memory for
the memory ratio mlx-lm / Lazarus). Runs alternate between the engines; the best of ``--repeats``
is reported, since a shared machine only ever makes a run slower.

    python benchmarks/train.py --size tiny --steps 60 --batch-size 8 --rank 8
    python benchmarks/train.py --size small --steps 30 --batch-size 4 --json out.json
    python benchmarks/train.py --size 1b --dtype bfloat16 --steps 60 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import bench_checkpoint, math_data, mlx_lm_lora_policy  # noqa: E402

REPORT = 10  # steps per report window


def heldout_examples(root: Path, model: Path, max_seq_length: int, count: int = 256) -> list:
    """``count`` held-out math problems (seed 1) as ``(ids, prompt_length)``, tokenised by Lazarus."""
    import lazarus
    from lazarus.data.examples import tokenize
    from lazarus.data.math import generate, write_math_data
    from lazarus.data.records import load_splits

    out = root / "math-heldout"
    if not (out / "sft" / "train.jsonl").is_file():
        write_math_data(generate(count, seed=1), out, valid_fraction=0.0, test_fraction=0.0, force=True)
    _, tokenizer, _ = lazarus.load_model(str(model))
    examples = tokenize(load_splits(out / "sft", format="sft").train, tokenizer, max_seq_length=max_seq_length)
    return [(e.ids.tolist(), e.prompt_length) for e in examples]


def eval_loss(net, examples: list, batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy of ``net`` on the completion tokens of ``examples``."""
    import mlx.core as mx
    import mlx.nn as nn

    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = examples[start:start + batch_size]
        width = max(len(ids) for ids, _ in rows)
        ids = mx.array([ids + [0] * (width - len(ids)) for ids, _ in rows])
        positions = mx.arange(1, width)[None]
        lengths = mx.array([len(ids) for ids, _ in rows])[:, None]
        prompts = mx.array([p for _, p in rows])[:, None]
        mask = ((positions >= prompts) & (positions < lengths)).astype(mx.float32)
        ce = nn.losses.cross_entropy(net(ids[:, :-1]).astype(mx.float32), ids[:, 1:], reduction="none")
        total += (ce * mask).sum().item()
        count += int(mask.sum().item())
    return total / count


def settings(args) -> dict:
    # mlx-lm trains at a constant rate: so does Lazarus here (its own default is warmup + cosine)
    return dict(rank=args.rank, scale=20.0, dropout=0.0, num_layers=args.num_layers,
                learning_rate=args.learning_rate, lr_schedule="constant", warmup_steps=0,
                batch_size=args.batch_size, max_steps=args.steps,
                max_seq_length=args.max_seq_length, seed=0, weight_decay=0.0, max_grad_norm=0.0,
                log_interval=REPORT, eval_interval=0, save_interval=0, keep_checkpoints=1)


def run_lazarus(model: Path, data: Path, output: Path, args) -> dict:
    import io

    import mlx.core as mx
    from rich.console import Console

    from lazarus.plugins import get

    trainer_cls = get("trainer", "sft").load()
    config = trainer_cls.config_class(model=str(model), data=str(data), output=str(output),
                                      lora_targets=tuple(args.keys.split(",")), **settings(args))
    trainer = trainer_cls(config, console=Console(file=io.StringIO()))
    trainer.load()  # loading is outside the measured part, as for mlx-lm below
    mx.reset_peak_memory()
    result = trainer.train()
    peak = mx.get_peak_memory()
    rows = [r for r in result.metrics if r["split"] == "train"][1:]  # drop the compile window
    tokens = sum(r["loss_items"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    trainer.model.eval()
    return {"loss_tokens_per_second": tokens / seconds, "steps_per_second": len(rows) * REPORT / seconds,
            "peak_memory_gb": peak / 1e9, "final_loss": rows[-1]["loss"] if rows else None,
            "eval_loss": eval_loss(trainer.model, args.heldout)}


def run_mlx_lm(model: Path, data: Path, output: Path, args) -> dict:
    import mlx.core as mx
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train

    import lazarus
    from lazarus.data.examples import tokenize
    from lazarus.data.records import load_splits

    # the very token sequences Lazarus trains on, with the prompt length as mlx-lm's mask offset
    _, tokenizer, _ = lazarus.load_model(str(model))
    examples = tokenize(load_splits(data, format="sft").train, tokenizer, max_seq_length=args.max_seq_length)
    dataset = [(e.ids.tolist(), e.prompt_length) for e in examples]

    net, _, optimizer = mlx_lm_lora_policy(model, keys=args.keys, rank=args.rank, num_layers=args.num_layers,
                                           learning_rate=args.learning_rate)

    reports: list[dict] = []

    class Collect(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    training_args = TrainingArgs(batch_size=args.batch_size, iters=args.steps, val_batches=0,
                                 steps_per_report=REPORT, steps_per_eval=10**9, steps_per_save=10**9,
                                 max_seq_length=args.max_seq_length,
                                 adapter_file=str(output / "adapters.safetensors"))
    output.mkdir(parents=True, exist_ok=True)
    mx.reset_peak_memory()
    train(net, optimizer, dataset, None, args=training_args, training_callback=Collect())
    peak = mx.get_peak_memory()
    rows = reports[1:]
    seconds = sum(REPORT / r["iterations_per_second"] for r in rows)
    tokens = sum(r["tokens_per_second"] * REPORT / r["iterations_per_second"] for r in rows)
    net.eval()
    return {"loss_tokens_per_second": tokens / seconds, "steps_per_second": len(rows) * REPORT / seconds,
            "peak_memory_gb": peak / 1e9, "final_loss": rows[-1]["train_loss"] if rows else None,
            "eval_loss": eval_loss(net, args.heldout)}


def run_lazarus_dpo(model: Path, data: Path, output: Path, args, ref_model: Path | None = None) -> dict:
    import io

    import mlx.core as mx
    from rich.console import Console

    from lazarus.plugins import get

    trainer_cls = get("trainer", "dpo").load()
    config = trainer_cls.config_class(model=str(model), data=str(data), output=str(output),
                                      lora_targets=tuple(args.keys.split(",")), beta=0.1,
                                      ref_model=str(ref_model) if ref_model else None, **settings(args))
    trainer = trainer_cls(config, console=Console(file=io.StringIO()))
    mx.reset_peak_memory()
    trainer.load()  # loading counts here: the reference is part of what DPO holds in memory
    result = trainer.train()
    peak = mx.get_peak_memory()
    rows = [r for r in result.metrics if r["split"] == "train"][1:]
    pairs = sum(r["loss_items"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {"pairs_per_second": pairs / seconds, "steps_per_second": len(rows) * REPORT / seconds,
            "peak_memory_gb": peak / 1e9, "final_loss": rows[-1]["loss"] if rows else None}


def run_mlx_lm_lora_dpo(model: Path, data: Path, output: Path, args) -> dict:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm_lora.trainer.dpo_trainer import DPOTrainingArgs, train_dpo

    import lazarus
    from lazarus.data.examples import tokenize
    from lazarus.data.records import load_splits

    _, tokenizer, _ = lazarus.load_model(str(model))
    examples = tokenize(load_splits(data, format="preference").train, tokenizer,
                        max_seq_length=args.max_seq_length)
    dataset = [{"chosen": e.chosen_ids.tolist(), "rejected": e.rejected_ids.tolist(),
                "chosen_prompt_length": e.prompt_length, "rejected_prompt_length": e.prompt_length}
               for e in examples]
    mx.reset_peak_memory()
    net, _, optimizer = mlx_lm_lora_policy(model, keys=args.keys, rank=args.rank, num_layers=args.num_layers,
                                           learning_rate=args.learning_rate)
    reference, _ = load(str(model))
    reference.freeze()
    reports: list[dict] = []

    class Collect(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    training_args = DPOTrainingArgs(batch_size=args.batch_size, iters=args.steps, val_batches=0,
                                    steps_per_report=REPORT, steps_per_eval=10**9, steps_per_save=10**9,
                                    max_seq_length=args.max_seq_length, beta=0.1,
                                    adapter_file=str(output / "adapters.safetensors"))
    output.mkdir(parents=True, exist_ok=True)
    info = mx.device_info()
    if "max_recommended_working_set_size" not in info:
        # mlx-lm-lora reads this Metal-only key unconditionally; give it the device's memory instead
        patched = {**info, "max_recommended_working_set_size": info.get("memory_size", 0)}
        mx.device_info = lambda: patched
    train_dpo(net, reference, optimizer, dataset, None, args=training_args, training_callback=Collect())
    peak = mx.get_peak_memory()
    rows = reports[1:]
    seconds = sum(REPORT / r["iterations_per_second"] for r in rows)
    return {"pairs_per_second": len(rows) * REPORT * args.batch_size / seconds,
            "steps_per_second": len(rows) * REPORT / seconds, "peak_memory_gb": peak / 1e9,
            "final_loss": rows[-1]["train_loss"] if rows else None}


def main_dpo(args, model: Path, cache: Path) -> int:
    import mlx.core as mx

    data = math_data(cache, args.examples, "preference")
    engines = {"lazarus": run_lazarus_dpo,
               "lazarus --ref-model": lambda m, d, o, a: run_lazarus_dpo(m, d, o, a, ref_model=m)}
    try:
        import mlx_lm_lora  # noqa: F401

        engines["mlx-lm-lora"] = run_mlx_lm_lora_dpo
    except ImportError as exc:
        print(f"mlx-lm-lora is not importable ({exc}); measuring Lazarus only", file=sys.stderr)
    results: dict[str, list[dict]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for name, run in engines.items():
                results[name].append(run(model, data, Path(work) / f"{name.replace(' ', '')}-{repeat}", args))
                print(f"run {repeat + 1}/{args.repeats} {name}: {results[name][-1]}", file=sys.stderr)
    best = {name: max(runs, key=lambda r: r["pairs_per_second"]) for name, runs in results.items()}
    print(f"LoRA DPO (sigmoid, beta 0.1), llama {args.size}, rank {args.rank}, keys {args.keys}, batch "
          f"{args.batch_size} pairs, {args.steps} steps (first {REPORT} dropped), {platform.machine()} "
          f"{mx.default_device()}")
    print(f"{'engine':<22}{'pairs/s':>10}{'steps/s':>10}{'peak GB':>10}{'final loss':>12}")
    for name, r in best.items():
        print(f"{name:<22}{r['pairs_per_second']:>10.2f}{r['steps_per_second']:>10.2f}"
              f"{r['peak_memory_gb']:>10.3f}{r['final_loss']:>12.3f}")
    ratios = {}
    if "mlx-lm-lora" in best:
        ratios = {"speed_ratio": best["lazarus"]["pairs_per_second"] / best["mlx-lm-lora"]["pairs_per_second"],
                  "memory_ratio": best["lazarus"]["peak_memory_gb"] / best["mlx-lm-lora"]["peak_memory_gb"]}
        print(f"speed ratio (Lazarus / mlx-lm-lora): {ratios['speed_ratio']:.2f}x   "
              f"peak memory ratio (Lazarus / mlx-lm-lora): {ratios['memory_ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "best": best, **ratios},
                                              indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=("sft", "dpo"), default="sft",
                        help="sft: vs mlx-lm; dpo: vs mlx-lm-lora (when importable)")
    parser.add_argument("--size", choices=("tiny", "small", "1b"), default="tiny",
                        help="tiny: 2 layers, hidden 64; small: ~75M llama; 1b: a 1.04B llama (GPU)")
    parser.add_argument("--dtype", default="float32", help="weights dtype of the checkpoint")
    parser.add_argument("--engines", default="mlx-lm,lazarus", help="SFT engines to run, in this order")
    parser.add_argument("--steps", type=int, default=60, help="training steps per engine and run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--num-layers", type=int, default=-1, help="adapt the last N blocks (-1: all)")
    parser.add_argument("--keys", default="q_proj,v_proj", help="LoRA target layers")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--examples", type=int, default=2000, help="math problems to train on")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lazarus-bench-train"))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    if args.steps < 2 * REPORT:
        parser.error(f"--steps must be at least {2 * REPORT} (the first {REPORT} steps are warm-up)")

    import mlx.core as mx

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    model = bench_checkpoint(cache, args.size, args.dtype)
    if args.trainer == "dpo":
        return main_dpo(args, model, cache)
    data = math_data(cache, args.examples, "sft")
    args.heldout = heldout_examples(cache, model, args.max_seq_length)
    runners = {"mlx-lm": run_mlx_lm, "lazarus": run_lazarus}
    order = args.engines.split(",")
    results: dict[str, list[dict]] = {"lazarus": [], "mlx-lm": []}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for engine in order if repeat % 2 == 0 else order[::-1]:
                results[engine].append(runners[engine](model, data, Path(work) / f"{engine}-{repeat}", args))
                print(f"run {repeat + 1}/{args.repeats} {engine}: {results[engine][-1]}", file=sys.stderr)

    best = {engine: max(runs, key=lambda r: r["loss_tokens_per_second"]) for engine, runs in results.items()}
    speed = best["lazarus"]["loss_tokens_per_second"] / best["mlx-lm"]["loss_tokens_per_second"]
    memory = best["mlx-lm"]["peak_memory_gb"] / max(best["lazarus"]["peak_memory_gb"], 1e-12)
    print(f"LoRA SFT, llama {args.size}, rank {args.rank}, keys {args.keys}, batch {args.batch_size}, "
          f"{args.steps} steps (first {REPORT} dropped), mlx {mx.__version__ if hasattr(mx, '__version__') else '?'} "
          f"on {platform.machine()} {mx.default_device()}")
    print(f"{'engine':<10}{'loss tok/s':>14}{'median':>10}{'steps/s':>10}{'peak GB':>10}{'final loss':>12}"
          f"{'eval loss (each run)':>28}")
    for engine in ("lazarus", "mlx-lm"):
        r = best[engine]
        median = statistics.median(x["loss_tokens_per_second"] for x in results[engine])
        evals = " ".join(f"{x['eval_loss']:.3f}" for x in results[engine])
        print(f"{engine:<10}{r['loss_tokens_per_second']:>14.1f}{median:>10.1f}{r['steps_per_second']:>10.2f}"
              f"{r['peak_memory_gb']:>10.3f}{r['final_loss']:>12.3f}{evals:>28}")
    eval_means = {e: statistics.mean(x["eval_loss"] for x in results[e]) for e in results}
    print(f"speed ratio (Lazarus / mlx-lm): {speed:.2f}x   memory ratio (mlx-lm / Lazarus): {memory:.2f}x   "
          f"mean eval loss: lazarus {eval_means['lazarus']:.3f}, mlx-lm {eval_means['mlx-lm']:.3f}")
    if args.json:
        saved = {k: v for k, v in vars(args).items() if k != "heldout"}
        Path(args.json).write_text(json.dumps({"args": saved, "runs": results, "best": best, "eval_loss_mean": eval_means,
                                               "speed_ratio": speed, "memory_ratio": memory}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
