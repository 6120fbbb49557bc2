"""Generation speed: Lazarus vs mlx-lm on the same checkpoint, in one run.

Measures, for each engine, prefill speed (prompt tokens / time to the first sampled token),
decode speed (tokens after the first / time after the first) and peak memory, at three levels:

- ``tokens``: the bare token loops (``lazarus.generation.generate_tokens`` vs ``mlx_lm.generate_step``),
  plus Lazarus with its compiled decode step turned off (``compiled=False``) as a third engine and,
  with ``--unfused``, a copy loaded without fused q/k/v and gate/up projections as a fourth;
- ``text``: streaming text generation (``lazarus.generation.stream_generate`` vs
  ``mlx_lm.stream_generate``), detokenisation included;
- ``batch``: ``lazarus.batch_generate`` vs ``mlx_lm.batch_generate`` at each ``--batch-sizes``
  (prompts of different lengths, left-padded), as generated tokens per second of wall time
  (prefill included), the figure a GRPO rollout sees.

All greedy on the same prompt ids, hooks off. Runs alternate between the engines; the best of
``--repeats`` runs is reported with the median, since a shared machine only ever makes a run
slower. Decode at batch 1 reads every weight once per token, so ``weight_gb × decode tok/s`` is
the bandwidth it reaches (``--bandwidth-gbs``, the device's peak, turns it into a fraction).
Prints a table and writes JSON (``--json``). The checkpoint is ``--model`` or a random llama of
``--size`` / ``--dtype`` (benchmarks/checkpoints.py), cached under ``--cache-dir``.

    python benchmarks/generation.py --size small --prompt-tokens 128 --gen-tokens 64 --repeats 3
    python benchmarks/generation.py --size 1b --dtype bfloat16 --prompt-tokens 128 --gen-tokens 256 \
        --repeats 7 --batch-sizes 8,32,64 --bandwidth-gbs 4800
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def _median(values):
    return statistics.median(values) if values else float("nan")


def time_token_loop(steps, prompt_len: int, gen_tokens: int, reset, peak):
    """Drive a token iterator; returns prefill tok/s, decode tok/s, peak GB and the tokens."""
    reset()
    start = time.perf_counter()
    first = None
    tokens = []
    for token in steps:
        tokens.append(int(token.item()) if hasattr(token, "item") else int(token))
        if first is None:
            first = time.perf_counter()
        if len(tokens) == gen_tokens:
            break
    end = time.perf_counter()
    return {"prefill_tps": prompt_len / (first - start), "decode_tps": (len(tokens) - 1) / (end - first),
            "peak_memory_gb": peak() / 1e9, "tokens": tokens}


def summarise(runs: dict, metrics: tuple[str, ...]) -> dict:
    """Best (max speed, min memory) and median of each engine's runs; ratios of the first engine to mlx-lm."""
    summary = {}
    for name, rs in runs.items():
        row = {}
        for metric in metrics:
            values = [r[metric] for r in rs]
            row[metric] = min(values) if metric == "peak_memory_gb" else max(values)
            row[f"median_{metric}"] = _median(values)
        summary[name] = row
    ours = next(iter(runs))
    for metric in metrics:
        if summary["mlx_lm"][metric]:
            summary[f"{metric}_ratio"] = summary[ours][metric] / summary["mlx_lm"][metric]
    return summary


def alternate(engines: dict, repeats: int) -> dict:
    """Warm each engine up once, then run them ``repeats`` times in alternating order."""
    runs = {name: [] for name in engines}
    for fn in engines.values():
        fn()  # warm-up: compile, allocate
    for i in range(repeats):
        order = list(engines.items())
        for name, fn in order if i % 2 == 0 else order[::-1]:
            runs[name].append(fn())
    return runs


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from checkpoints import SIZES, bench_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="existing checkpoint (default: a random llama of --size)")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (with --size)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lazarus-bench")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill-step-size", type=int, default=2048)
    parser.add_argument("--levels", default="tokens,text,batch", help="which of tokens,text,batch to run")
    parser.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes for the batch level")
    parser.add_argument("--batch-gen-tokens", type=int, default=None, help="new tokens per row (default --gen-tokens)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="device peak memory bandwidth, GB/s")
    parser.add_argument("--unfused", action="store_true",
                        help="tokens level: also run a second Lazarus copy loaded without fused q/k/v and gate/up "
                             "projections (LAZARUS_FUSED_PROJECTIONS=0), alternated with the others")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default: CACHE_DIR/generation.json)")
    args = parser.parse_args()
    args.json = args.json or args.cache_dir / "generation.json"
    levels = set(args.levels.split(","))

    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    from lazarus.generation import SamplingConfig, batch_generate, generate_tokens, stream_generate
    from lazarus.loader import load_model

    path = args.model or bench_checkpoint(args.cache_dir, args.size, args.dtype)
    model, tokenizer, _ = load_model(str(path))
    unfused_model = None
    if args.unfused:
        import lazarus.models.fused as fused

        fused.FUSE_AT_LOAD = False
        unfused_model, _, _ = load_model(str(path))
        fused.FUSE_AT_LOAD = True
    ref_model, ref_tokenizer = mlx_lm.load(str(path))
    weights = tree_flatten(model.parameters())
    n_params = sum(v.size for _, v in weights)
    weight_gb = sum(v.nbytes for _, v in weights) / 1e9

    # a prompt of ordinary text tokens (no EOS), the same ids for both engines
    base = tokenizer.encode("What is 12 + 7? 19. The quick brown fox jumps over the lazy dog. ",
                            add_special_tokens=False)
    prompt_ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
    while len(prompt_ids) < args.prompt_tokens:
        prompt_ids += base
    prompt_ids = prompt_ids[:args.prompt_tokens]
    prompt = mx.array(prompt_ids, dtype=mx.int32)
    greedy = SamplingConfig()
    ref_sampler = mlx_make_sampler(temp=0.0)
    reset, peak = mx.reset_peak_memory, mx.get_peak_memory

    def lazarus_tokens(compiled=True, model=model):
        steps = generate_tokens(model, prompt[None], sampling=greedy, max_tokens=args.gen_tokens,
                                prefill_step_size=args.prefill_step_size, compiled=compiled)
        return time_token_loop(steps, len(prompt_ids), args.gen_tokens, reset, peak)

    def mlx_lm_tokens():
        steps = (tok for tok, _ in generate_step(prompt, ref_model, max_tokens=args.gen_tokens,
                                                 sampler=ref_sampler,
                                                 prefill_step_size=args.prefill_step_size))
        return time_token_loop(steps, len(prompt_ids), args.gen_tokens, reset, peak)

    def lazarus_text():
        chunks = stream_generate(model, tokenizer, prompt_ids, max_tokens=args.gen_tokens, sampling=greedy,
                                 stop_token_ids=[], prefill_step_size=args.prefill_step_size)
        return time_token_loop((c.token for c in chunks), len(prompt_ids), args.gen_tokens, reset, peak)

    def mlx_lm_text():
        chunks = mlx_lm.stream_generate(ref_model, ref_tokenizer, prompt_ids, max_tokens=args.gen_tokens,
                                        sampler=ref_sampler, prefill_step_size=args.prefill_step_size)
        return time_token_loop((c.token for c in chunks), len(prompt_ids), args.gen_tokens, reset, peak)

    results: dict = {}
    single_metrics = ("prefill_tps", "decode_tps", "peak_memory_gb")
    if "tokens" in levels:
        engines = {"lazarus": lazarus_tokens, "mlx_lm": mlx_lm_tokens,
                   "lazarus_uncompiled": lambda: lazarus_tokens(False)}
        if unfused_model is not None:
            engines["lazarus_unfused"] = lambda: lazarus_tokens(model=unfused_model)
        runs = alternate(engines, args.repeats)
        summary = summarise(runs, single_metrics)
        if unfused_model is not None:
            summary["same_as_unfused"] = runs["lazarus"][0]["tokens"] == runs["lazarus_unfused"][0]["tokens"]
        summary["same_greedy_tokens"] = runs["lazarus"][0]["tokens"] == runs["mlx_lm"][0]["tokens"]
        summary["same_as_uncompiled"] = runs["lazarus"][0]["tokens"] == runs["lazarus_uncompiled"][0]["tokens"]
        summary["decode_gbs"] = weight_gb * summary["lazarus"]["decode_tps"]
        if args.bandwidth_gbs:
            summary["decode_fraction_of_bound"] = summary["decode_gbs"] / args.bandwidth_gbs
            summary["bound_decode_tps"] = args.bandwidth_gbs / weight_gb
        results["tokens"] = summary
    if "text" in levels:
        try:
            runs = alternate({"lazarus": lazarus_text, "mlx_lm": mlx_lm_text}, args.repeats)
            results["text"] = summarise(runs, single_metrics)
            results["text"]["same_greedy_tokens"] = runs["lazarus"][0]["tokens"] == runs["mlx_lm"][0]["tokens"]
        except Exception as exc:  # e.g. a detokeniser that cannot handle ids past the tokenizer's vocab
            results["text"] = {"error": f"{type(exc).__name__}: {exc}"}

    batch_tokens = args.batch_gen_tokens or args.gen_tokens
    for size in [int(b) for b in args.batch_sizes.split(",")] if "batch" in levels else []:
        # prompts of different lengths (half to all of --prompt-tokens), as in a rollout batch
        rows = [prompt_ids[: max(1, args.prompt_tokens // 2 + (i * 37) % (args.prompt_tokens // 2 + 1))]
                for i in range(size)]
        generated = size * batch_tokens

        def lazarus_batch(rows=rows, generated=generated):
            reset()
            start = time.perf_counter()
            out = batch_generate(model, tokenizer, rows, max_tokens=batch_tokens, sampling=greedy)
            seconds = time.perf_counter() - start
            return {"tps": sum(len(r.token_ids) for r in out) / seconds, "peak_memory_gb": peak() / 1e9,
                    "tokens": [r.token_ids for r in out], "full": sum(len(r.token_ids) for r in out) == generated}

        def mlx_lm_batch(rows=rows, size=size, generated=generated):
            reset()
            start = time.perf_counter()
            out = mlx_lm.batch_generate(ref_model, ref_tokenizer, rows, max_tokens=batch_tokens,
                                        sampler=ref_sampler, return_token_ids=True,
                                        completion_batch_size=size, prefill_batch_size=size)
            seconds = time.perf_counter() - start
            ids = [list(t) for t in out.token_ids]
            return {"tps": sum(len(t) for t in ids) / seconds, "peak_memory_gb": peak() / 1e9,
                    "tokens": ids, "full": sum(len(t) for t in ids) == generated}

        runs = alternate({"lazarus": lazarus_batch, "mlx_lm": mlx_lm_batch}, args.repeats)
        summary = summarise(runs, ("tps", "peak_memory_gb"))
        ours, theirs = runs["lazarus"][0]["tokens"], runs["mlx_lm"][0]["tokens"]
        summary["rows_with_same_tokens"] = sum(a == b[:len(a)] or b == a[:len(b)] for a, b in zip(ours, theirs, strict=True))
        results[f"batch{size}"] = summary

    report = {"checkpoint": str(path), "parameters": n_params, "weight_gb": weight_gb,
              "prompt_tokens": len(prompt_ids), "gen_tokens": args.gen_tokens, "batch_gen_tokens": batch_tokens,
              "repeats": args.repeats, "device": str(mx.default_device()), "mlx": mx.__version__,
              "mlx_lm": mlx_lm.__version__, "platform": f"{platform.system()} {platform.machine()}",
              "results": results}
    print(f"\nLazarus vs mlx-lm, {n_params / 1e6:.1f}M-parameter llama ({weight_gb:.2f} GB), "
          f"{len(prompt_ids)} prompt tokens, {args.gen_tokens} generated, best of {args.repeats} (median), "
          f"{mx.default_device()}")
    header = f"{'level':<8} {'metric':<15} {'lazarus':>18} {'mlx-lm':>18} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))
    for level, summary in results.items():
        if "error" in summary:
            print(f"{level:<8} error: {summary['error']}")
            continue
        for metric in ("prefill_tps", "decode_tps", "tps", "peak_memory_gb"):
            if metric not in summary["lazarus"]:
                continue
            cells = [f"{summary[e][metric]:.2f} ({summary[e]['median_' + metric]:.2f})" for e in ("lazarus", "mlx_lm")]
            print(f"{level:<8} {metric:<15} {cells[0]:>18} {cells[1]:>18} {summary[metric + '_ratio']:>6.2f}x")
        if "lazarus_uncompiled" in summary:
            print(f"{level:<8} uncompiled decode {summary['lazarus_uncompiled']['decode_tps']:.2f} tok/s; "
                  f"same tokens as uncompiled: {summary['same_as_uncompiled']}; "
                  f"decode reads {summary['decode_gbs']:.1f} GB/s"
                  + (f" = {summary['decode_fraction_of_bound']:.0%} of the bound" if args.bandwidth_gbs else ""))
        if "lazarus_unfused" in summary:
            u = summary["lazarus_unfused"]
            print(f"{level:<8} unfused projections: decode {u['decode_tps']:.2f} ({u['median_decode_tps']:.2f}) "
                  f"tok/s; same tokens as fused: {summary['same_as_unfused']}")
        if "same_greedy_tokens" in summary:
            print(f"{level:<8} same greedy tokens as mlx-lm: {summary['same_greedy_tokens']}")
        if "rows_with_same_tokens" in summary:
            print(f"{level:<8} rows with the same greedy tokens as mlx-lm: {summary['rows_with_same_tokens']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
