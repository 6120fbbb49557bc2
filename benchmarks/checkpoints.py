"""The benchmarks' checkpoints: random llamas made with ``lazarus.models.create``, cached by size/dtype.

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
