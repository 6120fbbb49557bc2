"""Peak memory of a short LoRA DPO run: the adapter-off reference vs a second copy (``--ref-model``).

The reference of a fresh LoRA adapter is the policy with its adapter switched off, so DPO holds one
copy of the weights; ``--ref-model`` (and mlx-lm-lora's DPO, which loads its reference separately)
holds two. On a model whose weights outweigh its activations the difference is the weights:

    python benchmarks/dpo_memory.py --size small     # 75M llama, fp32
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import bench_checkpoint, math_data  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="small")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=64)
    args = parser.parse_args()

    import mlx.core as mx
    from rich.console import Console

    from lazarus.plugins import get

    cache = Path(tempfile.gettempdir()) / "lazarus-bench-train"
    model, data = bench_checkpoint(cache, args.size), math_data(cache, 400, "preference")
    trainer_cls = get("trainer", "dpo").load()
    peaks = {}
    for name, ref in (("adapter-off reference", None), ("--ref-model (second copy)", str(model))):
        with tempfile.TemporaryDirectory() as out:
            config = trainer_cls.config_class(
                model=str(model), data=str(data), output=out, batch_size=args.batch_size, max_steps=args.steps,
                max_seq_length=args.max_seq_length, eval_interval=0, save_interval=0, log_interval=1,
                ref_model=ref, lora_targets=("q_proj", "v_proj"))
            mx.reset_peak_memory()
            trainer_cls(config, console=Console(file=io.StringIO())).train()
            peaks[name] = mx.get_peak_memory() / 1e9
    for name, gb in peaks.items():
        print(f"{name:<28}{gb:>8.3f} GB")
    first, second = peaks.values()
    print(f"ratio (adapter-off / two copies): {first / second:.2f}x")
    print(json.dumps(peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
