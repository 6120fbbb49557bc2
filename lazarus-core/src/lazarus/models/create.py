"""Random checkpoints in real Hugging Face layout, for tests, benchmarks and ``lazarus models create``.

A created directory holds ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer files of a small BPE trained offline (``lazarus.tokenizer.train_tokenizer``) and
``lazarus.json``; it loads with ``lazarus.load_model`` and with other HF-layout readers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import cast

import numpy as np

from lazarus.errors import LazarusError

SIZES = ("tiny", "small")
DEFAULT_VOCAB = {"tiny": 512, "small": 8192}


def family_config(family: str, size: str = "tiny", vocab_size: int | None = None) -> dict:
    """The HF ``config.json`` dict a family's ``{size}_config(vocab_size)`` gives."""
    from lazarus.plugins import get

    module = get("family", family).load()
    builder = getattr(module, f"{size}_config", None)
    if builder is None:
        sizes = [s for s in SIZES if hasattr(module, f"{s}_config")]
        raise LazarusError(f"family {family!r} has no {size!r} size; available: {', '.join(sizes) or 'none'}")
    return builder(vocab_size or DEFAULT_VOCAB[size])


def random_weights(model, seed: int = 0) -> dict:
    """HF-keyed random float32 weights for ``model`` with scales that keep activations O(1).

    Linear weights ~ N(0, 1/fan_in); embeddings and the head ~ N(0, 4/hidden) so logits spread over
    a few units instead of being flat; norm weights near 1 (near 0 for Gemma's 1+w norms) and
    biases non-zero, so that a checkpoint exercises every parameter.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    rng = np.random.default_rng(seed)
    hidden = model.args.hidden_size
    out = {}
    for key, param in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters())):
        shape = tuple(param.shape)
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
            value = rng.normal(0.0, 2.0 / math.sqrt(hidden), shape)
        elif key.endswith("norm.weight"):
            value = rng.normal(0.0, 0.1, shape) + (0.0 if model.args.norm_offset else 1.0)
        elif key.endswith(".bias"):
            value = rng.normal(0.0, 0.2, shape)
        elif len(shape) == 2:
            value = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), shape)
        else:
            value = rng.normal(0.0, 0.02, shape)
        out[key] = mx.array(value.astype(np.float32))
    return out


def create_checkpoint(family: str, output: str | os.PathLike, *, size: str = "tiny", seed: int = 0,
                      dtype: str = "float32", vocab_size: int | None = None,
                      config_overrides: dict | None = None, force: bool = False) -> Path:
    """Write a random ``family`` checkpoint of ``size`` to ``output``; returns the directory.

    ``config_overrides`` updates the family's config dict before the model is built (tests use it
    to switch layouts or make a feature matter). Refuses a non-empty ``output`` unless ``force``.
    Everything is written to a temporary directory beside ``output`` and renamed at the end, so a
    failure leaves what was there untouched.
    """
    import mlx.core as mx

    from lazarus import provenance
    from lazarus.loader import DTYPES
    from lazarus.plugins import get
    from lazarus.tokenizer import train_tokenizer

    if size not in SIZES:
        raise LazarusError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if dtype not in DTYPES:
        raise LazarusError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise LazarusError(f"{out}: exists and is not empty; choose another --output or pass --force to replace it")

    spec = get("family", family)
    module = spec.load()
    config = family_config(family, size, vocab_size)
    config.update(config_overrides or {})
    vocab = int(config["vocab_size"])

    from lazarus.io import atomic_directory

    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # renamed onto out when the block ends, or discarded on an error (out untouched)
            tmp = stack.enter_context(atomic_directory(out))
        except OSError as exc:
            raise LazarusError(f"{out}: cannot write there ({exc.strerror}); choose another --output") from None
        tokenizer = train_tokenizer(tmp, vocab_size=min(vocab, DEFAULT_VOCAB["small"]))
        eos = sorted(tokenizer.eos_token_ids)
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
                   "pad_token_id": tokenizer.pad_token_id}
        config = {**config, **special, "torch_dtype": dtype}

        args = module.ModelArgs.from_hf_config(config)
        model = module.Model(args)
        weights = random_weights(model, seed)
        model.load_weights(list(weights.items()))
        weights = model.hf_weights()  # under the checkpoint's keys (Phi-3 fuses layers again)
        weights = {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()}
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(special, indent=2) + "\n")
        provenance.write(tmp, provenance.collect(
            config=tmp / "config.json", created_by="lazarus models create", model_family=spec.name,
            size=size, seed=seed, dtype=dtype,
            files={p.name: provenance.sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        ))
    return out
