"""Generation speed: Lazarus vs mlx-lm on the same checkpoint, in one run.

Measures, for each engine, prefill speed (prompt tokens / time to the first sampled token),
decode speed (tokens after the first / time after the first) and peak memory, at two levels:

- ``tokens``: the bare token loops (``lazarus.generate.generate_tokens`` vs ``mlx_lm.generate_step``);
- ``text``: streaming text generation (``lazarus.generate.stream_generate`` vs
  ``mlx_lm.stream_generate``), detokenisation included.

Both use greedy sampling on the same prompt ids, hooks off. Runs alternate between the engines;
the best of ``--repeats`` runs is reported (and the median), since a shared machine only ever
makes a run slower, never faster. Prints a table and writes
JSON (``--json``). The checkpoint is a ~75M-parameter llama made with
``lazarus models create --family llama --size small`` (or built here with the same config if that
command is missing), cached under ``--cache-dir``.

    python benchmarks/generation.py --prompt-tokens 128 --gen-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_checkpoint(path: Path) -> None:
    """A random ~75M llama in HF layout, through `lazarus models create` when it exists."""
    exe = Path(sys.executable).with_name("lazarus")
    cmd = [str(exe), "models", "create", "--family", "llama", "--size", "small", "--output", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode == 0 and (path / "config.json").is_file():
        print(f"checkpoint made with: {' '.join(cmd[1:])}", file=sys.stderr)
        return
    print(f"`lazarus models create` unavailable ({done.stderr.strip().splitlines()[-1:]}); "
          "building the checkpoint here", file=sys.stderr)
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from lazarus.tokenizer import train_tokenizer
    from lazarus_families import llama

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = train_tokenizer(tmp, vocab_size=8192)
    config = llama.small_config(vocab_size=8192)
    config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_hf_config(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(path)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="existing checkpoint (default: create llama small)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lazarus-bench")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill-step-size", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default: CACHE_DIR/generation.json)")
    args = parser.parse_args()
    args.json = args.json or args.cache_dir / "generation.json"

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    from lazarus.generate import SamplingConfig, generate_tokens, stream_generate
    from lazarus.loader import load_model

    path = args.model
    if path is None:
        path = args.cache_dir / "llama-small"
        if not (path / "config.json").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_checkpoint(path)
    model, tokenizer, _ = load_model(str(path))
    ref_model, ref_tokenizer = mlx_lm.load(str(path))
    n_params = sum(v.size for _, v in __import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(
        model.parameters()))

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

    def lazarus_tokens():
        steps = generate_tokens(model, prompt[None], sampling=greedy, max_tokens=args.gen_tokens,
                                prefill_step_size=args.prefill_step_size)
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

    engines = {"tokens": (lazarus_tokens, mlx_lm_tokens), "text": (lazarus_text, mlx_lm_text)}
    results: dict = {}
    for level, (ours, theirs) in engines.items():
        runs = {"lazarus": [], "mlx_lm": []}
        try:
            ours(), theirs()  # warm-up: compile, allocate
            for i in range(args.repeats):
                order = [("lazarus", ours), ("mlx_lm", theirs)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    runs[name].append(fn())
        except Exception as exc:  # e.g. a detokeniser that cannot handle ids past the tokenizer's vocab
            results[level] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        summary = {}
        for name, rs in runs.items():
            summary[name] = {"prefill_tps": max(r["prefill_tps"] for r in rs),
                             "decode_tps": max(r["decode_tps"] for r in rs),
                             "peak_memory_gb": min(r["peak_memory_gb"] for r in rs),
                             "median_prefill_tps": _median([r["prefill_tps"] for r in rs]),
                             "median_decode_tps": _median([r["decode_tps"] for r in rs])}
        summary["prefill_ratio"] = summary["lazarus"]["prefill_tps"] / summary["mlx_lm"]["prefill_tps"]
        summary["decode_ratio"] = summary["lazarus"]["decode_tps"] / summary["mlx_lm"]["decode_tps"]
        summary["memory_ratio"] = summary["lazarus"]["peak_memory_gb"] / summary["mlx_lm"]["peak_memory_gb"]
        summary["same_greedy_tokens"] = runs["lazarus"][0]["tokens"] == runs["mlx_lm"][0]["tokens"]
        results[level] = summary

    report = {"checkpoint": str(path), "parameters": n_params, "prompt_tokens": len(prompt_ids),
              "gen_tokens": args.gen_tokens, "repeats": args.repeats,
              "device": str(mx.default_device()), "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
              "platform": f"{platform.system()} {platform.machine()}", "results": results}
    print(f"\nLazarus vs mlx-lm, {n_params / 1e6:.1f}M-parameter llama, {len(prompt_ids)} prompt tokens, "
          f"{args.gen_tokens} generated, best of {args.repeats}, {mx.default_device()}")
    header = f"{'level':<7} {'metric':<16} {'lazarus':>10} {'mlx-lm':>10} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))
    for level, summary in results.items():
        if "error" in summary:
            print(f"{level:<7} error: {summary['error']}")
            continue
        for metric, ratio in (("prefill_tps", "prefill_ratio"), ("decode_tps", "decode_ratio"),
                              ("peak_memory_gb", "memory_ratio")):
            ours, theirs = summary["lazarus"][metric], summary["mlx_lm"][metric]
            print(f"{level:<7} {metric:<16} {ours:>10.3f} {theirs:>10.3f} {summary[ratio]:>6.2f}x")
        medians = {name: (summary[name]["median_prefill_tps"], summary[name]["median_decode_tps"])
                   for name in ("lazarus", "mlx_lm")}
        print(f"{level:<7} medians (prefill, decode tok/s): lazarus {medians['lazarus'][0]:.2f}, "
              f"{medians['lazarus'][1]:.2f}; mlx-lm {medians['mlx_lm'][0]:.2f}, {medians['mlx_lm'][1]:.2f}")
        print(f"{level:<7} same greedy tokens: {summary['same_greedy_tokens']}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
