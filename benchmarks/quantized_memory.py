"""Peak memory of LoRA training on a 4-bit base (QLoRA) against the same model in float16.

One Llama-shaped checkpoint (about 100M parameters by default: 8 layers, hidden 1024, vocab
32000) is written in float16, quantized with ``lazarus quantize``'s code (4 bits, groups of 64),
and each is trained for a few steps by the `sft` trainer with the same LoRA settings, each in a
fresh process. Peak memory is ``mx.get_peak_memory()`` over the training steps, after loading (the
weights are resident, so they count), as in ``benchmarks/train.py``. The figure that matters is
the ratio 4-bit / float16: the weights shrink about 3.5x, activations and the adapter do not.

    python benchmarks/quantized_memory.py --json out.json
    python benchmarks/quantized_memory.py --hidden 512 --layers 4 --vocab 8192 --steps 2

On a CPU (mlx[cpu]) both float16 and quantized matmuls are slow (float16 is emulated, quantized
matmul has no fast CPU kernel): the default size takes many minutes there; on Apple silicon or
CUDA it takes seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def make_models(root: Path, args) -> dict[str, Path]:
    import lazarus
    from lazarus import checkpoints
    from lazarus.models.create import create_checkpoint
    from lazarus.models.quantize import quantize_model

    heads = args.hidden // 64
    fp16 = create_checkpoint("llama", root / "fp16", size="small", dtype="float16", vocab_size=args.vocab, config_overrides={
        "hidden_size": args.hidden, "intermediate_size": args.hidden * 11 // 4, "num_hidden_layers": args.layers,
        "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 4), "head_dim": 64,
        "tie_word_embeddings": False})
    model, _, config = lazarus.load_model(fp16)
    settings = quantize_model(model, bits=4, group_size=64)
    q4 = checkpoints.save("hf", root / "q4", model=model, config={**config, "quantization": settings})
    return {"float16": fp16, "4-bit": q4}


def make_data(root: Path) -> Path:
    from lazarus.data.math import generate, write_math_data

    write_math_data(generate(400, seed=0), root / "math", valid_fraction=0.0, test_fraction=0.0, force=True)
    return root / "math" / "sft"


def train_once(model: str, data: str, output: str, args) -> dict:
    import mlx.core as mx
    from rich.console import Console

    from lazarus.plugins import get

    trainer_cls = get("trainer", "sft").load()
    config = trainer_cls.config_class(
        model=model, data=data, output=output, rank=8, num_layers=-1, learning_rate=1e-4,
        batch_size=args.batch_size, max_steps=args.steps, max_seq_length=args.max_seq_length, seed=0,
        log_interval=args.steps, eval_interval=0, save_interval=0)
    trainer = trainer_cls(config, console=Console(file=io.StringIO()))
    trainer.load()
    weights = mx.get_active_memory()
    mx.reset_peak_memory()
    trainer.train()
    return {"weights_gb": weights / 1e9, "peak_memory_gb": mx.get_peak_memory() / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--run", nargs=3, metavar=("MODEL", "DATA", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # the child process: one training run
        print(json.dumps(train_once(*args.run, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models, data = make_models(root, args), make_data(root)
        results = {}
        for name, path in models.items():
            child = [sys.executable, __file__, "--run", str(path), str(data), str(root / f"out-{name}"),
                     "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                     "--max-seq-length", str(args.max_seq_length)]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    ratio = results["4-bit"]["peak_memory_gb"] / results["float16"]["peak_memory_gb"]
    print(f"{'base':<10}{'weights GB':>12}{'peak GB':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['weights_gb']:>12.3f}{r['peak_memory_gb']:>10.3f}")
    print(f"peak memory 4-bit / float16: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "results": results,
                                         "ratio": ratio}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
