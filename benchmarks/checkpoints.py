"""What the benchmarks share: their checkpoints (random llamas made with ``lazarus.models.create``,
cached by size/dtype), their math data, and the mlx-lm LoRA policy the peer engines train.

``tiny`` (2 layers, hidden 64) and ``small`` (~75M) are the sizes ``lazarus models create`` knows;
``1b`` is a 1.04B-parameter Llama-3.2-1B-like shape (hidden 2048, 16 layers, 32 heads, 8 KV heads,
vocabulary 32000) for GPU measurements. Build it where it is measured (~35 s), never ship it.
"""

from __future__ import annotations

from pathlib import Path

SIZES = ("tiny", "small", "1b")
ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8)


def bench_checkpoint(cache_dir: Path, size: str = "small", dtype: str = "float32") -> Path:
    """The directory of the ``size``/``dtype`` benchmark llama under ``cache_dir``, made if missing."""
    from lazarus.models.create import create_checkpoint

    path = Path(cache_dir) / f"llama-{size}-{dtype}"
    if not (path / "config.json").is_file():
        if size == "1b":
            create_checkpoint("llama", path, size="small", vocab_size=32000, dtype=dtype, seed=0,
                              config_overrides=ONE_B, force=True)
        else:
            create_checkpoint("llama", path, size=size, dtype=dtype, seed=0, force=True)
    return path


def math_data(cache_dir: Path, count: int, split: str) -> Path:
    """``split`` (``sft``, ``preference``, ``prompts``) of ``count`` math problems (seed 0, all in train),
    made once per count under ``cache_dir``."""
    from lazarus.data.math import generate, write_math_data

    out = Path(cache_dir) / f"math-{count}"
    if not (out / split / "train.jsonl").is_file():
        write_math_data(generate(count, seed=0), out, valid_fraction=0.0, test_fraction=0.0, force=True)
    return out / split


def mlx_lm_lora_policy(model: Path, *, keys: str, rank: int, num_layers: int, learning_rate: float):
    """``(model, tokenizer, optimizer)`` as the mlx-lm engines train it: loaded by mlx-lm, frozen, LoRA
    (scale 20, no dropout) on ``keys`` (``q_proj,v_proj``) of the last ``num_layers`` blocks (-1: all),
    AdamW without weight decay; seeded like Lazarus's runs."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    net, tokenizer = load(str(model))
    net.freeze()
    paths = [f"self_attn.{k}" if k.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else f"mlp.{k}"
             for k in keys.split(",")]
    blocks = len(net.layers) if num_layers < 0 else num_layers
    linear_to_lora_layers(net, blocks, {"rank": rank, "scale": 20.0, "dropout": 0.0, "keys": paths})
    return net, tokenizer, optim.AdamW(learning_rate=learning_rate, weight_decay=0.0)
