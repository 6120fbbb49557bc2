"""Serving throughput: ``lazarus serve`` vs ``mlx_lm.server`` on the same checkpoint, in one run.

Starts both servers (each in its own process, on a free port, batching up to the largest client
count), then for each ``--clients`` level N runs N concurrent clients, each sending
``--requests`` streamed greedy completions one after the other (distinct prompts of about
``--prompt-tokens`` tokens, ``--max-tokens`` each). Measured per level and engine:

- requests/s and generated tokens/s over the wall time of the whole level;
- time to first token (TTFT: request sent -> first text received), p50 and p95 over all requests.

Levels and engines alternate (the engine order flips every repeat); the best of ``--repeats`` runs
is reported with the median, since a shared machine only ever makes a run slower. Clients speak
plain HTTP (``http.client``), so nothing but the two servers' own stacks is measured. Prints the
machine, a table and writes JSON (``--json``). The checkpoint is ``--model`` or a random llama of
``--size`` / ``--dtype`` (benchmarks/checkpoints.py), cached under ``--cache-dir``.

    python benchmarks/serve.py --size small --clients 1,8,32 --max-tokens 64 --repeats 3
    python benchmarks/serve.py --size 1b --dtype bfloat16 --clients 1,8,32 --max-tokens 128 --repeats 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = ("the river carried small boats past the old mill while children counted them from the bridge "
         "and the baker sold warm bread to travellers who had walked since dawn").split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(engine: str, model: Path, port: int, max_batch: int, max_tokens: int) -> subprocess.Popen:
    if engine == "lazarus":
        command = [sys.executable, "-c", "from lazarus.cli import main; main()", "serve", "--model", str(model),
                   "--port", str(port), "--max-batch", str(max_batch), "--max-tokens", str(max_tokens)]
    else:
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port),
                   "--decode-concurrency", str(max_batch), "--prompt-concurrency", str(max_batch),
                   "--max-tokens", str(max_tokens), "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise SystemExit(f"{engine} server did not start:\n{process.stderr.read()}") from None
            time.sleep(0.25)


def stream_completion(port: int, model: str, prompt: str, max_tokens: int, tokenizer) -> dict:
    """One streamed greedy completion; returns TTFT (s), generated tokens and total seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True, "stream_options": {"include_usage": True}})
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, pieces, usage = None, [], None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            if choice.get("text"):
                first = first or time.perf_counter()
                pieces.append(choice["text"])
    end = time.perf_counter()
    connection.close()
    text = "".join(pieces)
    tokens = usage["completion_tokens"] if usage else len(tokenizer.encode(text, add_special_tokens=False))
    return {"ttft": (first or end) - start, "tokens": tokens, "seconds": end - start, "text": text}


def run_level(port: int, model: str, clients: int, requests: int, prompts: list[str], max_tokens: int,
              tokenizer) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int):
        for r in range(requests):
            try:
                out = stream_completion(port, model, prompts[(c * requests + r) % len(prompts)], max_tokens, tokenizer)
            except Exception as exc:  # reported, not fatal: a failed request shows in the table
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results)
    return {"requests_per_s": len(results) / wall, "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": _percentile(ttfts, 50), "ttft_p95": _percentile(ttfts, 95),
            "requests": len(results), "errors": errors[:3], "error_count": len(errors),
            "tokens": sum(r["tokens"] for r in results)}


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def machine() -> str:
    import mlx.core as mx

    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {gpu or 'no NVIDIA GPU'}, "
            f"mlx {mx.__version__} default device {mx.default_device()}")


def main() -> None:
    from checkpoints import SIZES, bench_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a random llama of --size)")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/lazarus-bench"))
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--requests", type=int, default=4, help="requests each client sends, one after another")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="lazarus,mlx_lm")
    parser.add_argument("--json", type=Path, default=Path("/tmp/lazarus-bench/serve.json"))
    args = parser.parse_args()

    from lazarus.tokenizer import Tokenizer

    path = args.model or bench_checkpoint(args.cache_dir, args.size, args.dtype)
    tokenizer = Tokenizer.from_dir(path)
    levels = [int(c) for c in args.clients.split(",")]
    engines = args.engines.split(",")
    prompts = []
    for i in range(max(levels) * args.requests):
        words = [f"Request {i}:"]
        while len(tokenizer.encode(" ".join(words))) < args.prompt_tokens:
            words.append(WORDS[(i + len(words)) % len(WORDS)])
        prompts.append(" ".join(words))
    print(f"machine: {machine()}")
    print(f"checkpoint: {path}; {len(prompts)} distinct prompts of ~{args.prompt_tokens} tokens, "
          f"{args.max_tokens} generated per request, {args.requests} requests per client, best of "
          f"{args.repeats} (median)", flush=True)

    servers = {}
    try:
        for engine in engines:
            port = free_port()
            servers[engine] = (start(engine, path, port, max(levels), args.max_tokens), port)
        model_ids = {"lazarus": str(path), "mlx_lm": str(path)}
        for engine, (_, port) in servers.items():  # warm-up at every batch size: kernels, allocations
            for n in levels:
                run_level(port, model_ids[engine], n, 1, prompts, args.max_tokens, tokenizer)
        runs = {(e, n): [] for e in engines for n in levels}
        for repeat in range(args.repeats):
            order = engines if repeat % 2 == 0 else engines[::-1]
            for n in levels:
                for engine in order:
                    result = run_level(servers[engine][1], model_ids[engine], n, args.requests, prompts,
                                       args.max_tokens, tokenizer)
                    runs[(engine, n)].append(result)
                    print(f"  repeat {repeat} clients {n:>3} {engine:<8} {result['tokens_per_s']:9.1f} tok/s "
                          f"{result['requests_per_s']:7.2f} req/s TTFT p50 {result['ttft_p50'] * 1000:7.1f} ms"
                          + (f"  errors: {result['error_count']} {result['errors'][:1]}" if result["errors"] else ""),
                          flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    summary = {}
    for (engine, n), rs in runs.items():
        row = {}
        for metric in ("requests_per_s", "tokens_per_s"):
            values = [r[metric] for r in rs]
            row[metric], row[f"median_{metric}"] = max(values), statistics.median(values)
        for metric in ("ttft_p50", "ttft_p95"):
            values = [r[metric] for r in rs]
            row[metric], row[f"median_{metric}"] = min(values), statistics.median(values)
        row["errors"] = sum(r["error_count"] for r in rs)
        summary[f"{engine}/{n}"] = row

    print(f"\nlazarus serve vs mlx_lm.server -- {machine()}")
    header = (f"{'clients':>7} {'engine':<8} {'tok/s best (med)':>20} {'req/s best (med)':>18} "
              f"{'TTFT p50 ms':>16} {'TTFT p95 ms':>16} {'tok/s ratio':>11}")
    print(header + "\n" + "-" * len(header))
    for n in levels:
        for engine in engines:
            row = summary[f"{engine}/{n}"]
            ratio = ""
            if engine == "lazarus" and "mlx_lm" in engines and summary[f"mlx_lm/{n}"]["tokens_per_s"]:
                ratio = f"{row['tokens_per_s'] / summary[f'mlx_lm/{n}']['tokens_per_s']:.2f}x"
            print(f"{n:>7} {engine:<8} {row['tokens_per_s']:>9.1f} ({row['median_tokens_per_s']:>8.1f}) "
                  f"{row['requests_per_s']:>7.2f} ({row['median_requests_per_s']:>7.2f}) "
                  f"{row['ttft_p50'] * 1000:>7.1f} ({row['median_ttft_p50'] * 1000:>6.1f}) "
                  f"{row['ttft_p95'] * 1000:>7.1f} ({row['median_ttft_p95'] * 1000:>6.1f}) {ratio:>11}"
                  + (f"  errors: {row['errors']}" if row["errors"] else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "checkpoint": str(path), "levels": levels,
                                     "max_tokens": args.max_tokens, "prompt_tokens": args.prompt_tokens,
                                     "requests_per_client": args.requests, "repeats": args.repeats,
                                     "summary": summary}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
