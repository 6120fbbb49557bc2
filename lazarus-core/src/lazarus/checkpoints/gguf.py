"""GGUF export (llama.cpp's format) through MLX's own writer, ``mx.save_gguf``.

Written: every weight under llama.cpp's tensor names (``token_embd``, ``blk.N.attn_q`` ...,
``output_norm``, ``output``), the architecture's hyper-parameters as ``{arch}.*`` metadata, and the
byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``: tokens, token types, merges, special
token ids) read from the checkpoint's ``tokenizer.json``. For the ``llama`` architecture the q/k
projection rows are permuted from Hugging Face's rotate-half layout to llama.cpp's interleaved
one (as llama.cpp's converter does), and llama3 RoPE scaling becomes the ``rope_freqs`` tensor.

A family says which GGUF architecture its checkpoints are (its model class's
``gguf_architecture``, e.g. ``"llama"``; None, the default: llama.cpp cannot run it exactly).
Models with sliding-window attention raise a LazarusError, as do families without an architecture.
Quantized models are refused: export the full-precision checkpoint (GGUF quantization is
llama.cpp's job: ``llama-quantize``).

Registered as the write-only checkpoint format ``gguf`` (:data:`GGUF`):
``checkpoints.save("gguf", "model.gguf", model=model, config=config, tokenizer_dir=DIR)``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import cast

import numpy as np

from lazarus.checkpoints.base import CheckpointFormat
from lazarus.errors import LazarusError

_NAMES = (
    ("model.layers.", "blk."), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"), ("post_attention_layernorm", "ffn_norm"),
    ("input_layernorm", "attn_norm"), ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"),
    ("lm_head", "output"),
)
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4


def gguf_name(key: str) -> str:
    """llama.cpp's tensor name for a Hugging Face key (``model.layers.0.self_attn.q_proj.weight`` ->
    ``blk.0.attn_q.weight``)."""
    for old, new in _NAMES:
        key = key.replace(old, new)
    return key


def permute_rows(weight, heads: int):
    """Rotate-half (HF) -> interleaved (llama.cpp) order of each head's rows of a q/k projection."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def architecture(model) -> str:
    """The GGUF architecture for a loaded model, or a LazarusError saying why it has none."""
    family = getattr(model, "family", "?")
    arch = getattr(model, "gguf_architecture", None)  # models of other libraries (mlx-lm's) have none
    windows = [b.window for b in getattr(model, "blocks", []) if getattr(b, "window", None)]
    if arch is None or windows:
        why = "sliding-window attention" if arch else f"the {family} family"
        raise LazarusError(f"GGUF export cannot express {why} exactly; supported: {', '.join(gguf_families())} "
                           "without sliding windows (use the Hugging Face checkpoint with other tools)")
    import mlx.nn as nn

    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        raise LazarusError("GGUF export takes a full-precision model; export the unquantized checkpoint "
                           "(llama.cpp's llama-quantize quantizes GGUF files)")
    return arch


def gguf_families() -> list[str]:
    """The installed families whose model class declares a ``gguf_architecture``."""
    from lazarus.plugins import get_registry

    registry = get_registry()
    found = []
    for name, spec in registry.all("family").items():
        try:
            model_cls = getattr(spec.load(), "Model", None)
        except Exception:  # a broken family is reported elsewhere; it exports nothing
            continue
        if getattr(model_cls, "gguf_architecture", None):
            found.append(name)
    return found


def gguf_tensors(model, dtype=None) -> dict:
    """The model's tensors under GGUF names (norms in float32, the rest in ``dtype`` or as stored;
    bfloat16 becomes float16, which GGUF readers take everywhere)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    arch = architecture(model)
    args = model.args
    out = {}
    for key, value in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters())):
        if arch == "llama" and key.endswith("self_attn.q_proj.weight"):
            value = permute_rows(value, args.num_attention_heads)
        elif arch == "llama" and key.endswith("self_attn.k_proj.weight"):
            value = permute_rows(value, args.kv_heads)
        if "norm" in key:
            value = value.astype(mx.float32)
        elif dtype is not None:
            value = value.astype(dtype)
        elif value.dtype == mx.bfloat16:
            value = value.astype(mx.float16)
        out[gguf_name(key)] = value
    scaling = args.rope_scaling
    if scaling and scaling.get("rope_type") == "llama3":
        from lazarus.models.rope import llama3_inverse_frequencies

        dims = args.dim_per_head
        plain = 1.0 / args.rope_theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
        scaled = llama3_inverse_frequencies(dims, args.rope_theta, scaling)
        out["rope_freqs.weight"] = mx.array((plain / scaled).astype(np.float32))
    return out


def gguf_metadata(model, config: dict, tokenizer_dir: Path) -> dict:
    """``{arch}.*`` hyper-parameters, ``general.*`` and the ``tokenizer.ggml.*`` entries."""
    import mlx.core as mx

    arch = architecture(model)
    args = model.args
    u32 = lambda v: mx.array(int(v), dtype=mx.uint32)  # noqa: E731
    meta = {
        "general.architecture": arch,
        "general.name": Path(getattr(getattr(model, "source", None), "model", "") or "model").name,
        "general.file_type": u32(1),  # mostly float16
        f"{arch}.context_length": u32(args.max_position_embeddings),
        f"{arch}.embedding_length": u32(args.hidden_size),
        f"{arch}.block_count": u32(args.num_hidden_layers),
        f"{arch}.feed_forward_length": u32(args.intermediate_size),
        f"{arch}.attention.head_count": u32(args.num_attention_heads),
        f"{arch}.attention.head_count_kv": u32(args.kv_heads),
        f"{arch}.attention.key_length": u32(args.dim_per_head),
        f"{arch}.attention.value_length": u32(args.dim_per_head),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(args.rms_norm_eps, dtype=mx.float32),
        f"{arch}.rope.freq_base": mx.array(args.rope_theta, dtype=mx.float32),
        f"{arch}.rope.dimension_count": u32(args.dim_per_head),
        f"{arch}.vocab_size": u32(args.vocab_size),
    }
    scaling = args.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        meta[f"{arch}.rope.scaling.type"] = "linear"
        meta[f"{arch}.rope.scaling.factor"] = mx.array(float(scaling["factor"]), dtype=mx.float32)
    meta.update(tokenizer_metadata(tokenizer_dir, args.vocab_size, config))
    return meta


def tokenizer_metadata(tokenizer_dir: Path, vocab_size: int, config: dict) -> dict:
    """The byte-level BPE tokenizer of ``tokenizer.json`` as GGUF's ``gpt2`` tokenizer model."""
    import mlx.core as mx

    path = Path(tokenizer_dir) / "tokenizer.json"
    try:
        spec = json.loads(path.read_text())
        model = spec["model"]
        vocab, merges = model["vocab"], model.get("merges", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LazarusError(f"{path}: cannot read the tokenizer for GGUF ({type(exc).__name__}: {exc})") from None
    if model.get("type") != "BPE":
        raise LazarusError(f"{path}: GGUF export supports byte-level BPE tokenizers; this one is "
                           f"{model.get('type')!r}")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [_TOKEN_USER_DEFINED] * vocab_size
    for text, i in vocab.items():
        if i < vocab_size:
            tokens[i], types[i] = text, _TOKEN_NORMAL
    for i, token in added.items():
        if i < vocab_size:
            tokens[i] = token["content"]
            types[i] = _TOKEN_CONTROL if token.get("special") else _TOKEN_USER_DEFINED
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in merges],
    }
    for name in ("bos", "eos", "pad"):
        value = config.get(f"{name}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            meta[f"tokenizer.ggml.{name}_token_id"] = mx.array(int(value), dtype=mx.uint32)
    return meta


def write_gguf(model, config: dict, tokenizer_dir: Path, output: str | os.PathLike, dtype=None) -> Path:
    """Write ``model`` (fused, full precision) to the GGUF file ``output`` atomically (a temporary file
    beside it, renamed at the end). Refuses an existing ``output``. Returns the path."""
    import mlx.core as mx

    out = Path(output)
    if out.suffix != ".gguf":
        raise LazarusError(f"output {output}: a GGUF file name must end in .gguf", field="output")
    if out.exists():
        raise LazarusError(f"output {output}: already exists; choose another file name", field="output")
    tensors = gguf_tensors(model, dtype)
    metadata = gguf_metadata(model, config, tokenizer_dir)
    from lazarus.io import atomic_path

    with atomic_path(out, suffix=".tmp.gguf") as tmp:
        mx.eval(list(tensors.values()))
        try:
            mx.save_gguf(str(tmp), tensors, metadata)
        except RuntimeError as exc:  # mlx says only "gguf_... failed": find out whether the disk is full
            tmp.unlink(missing_ok=True)
            needed = sum(t.nbytes for t in tensors.values())
            if shutil.disk_usage(out.parent).free < needed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from None
            raise LazarusError(f"cannot write {out}: {' '.join(str(exc).split())}") from None
    return out


class GGUFFormat(CheckpointFormat):
    """Write-only: a whole model as one llama.cpp GGUF file (``can_read=False`` in its spec)."""

    name = "gguf"
    holds = "model"

    def detect(self, path: Path) -> bool:
        return Path(path).suffix == ".gguf" and Path(path).is_file()

    def write(self, path: str | Path, *, model, config: dict, tokenizer_dir: str | Path, dtype=None) -> Path:
        """:func:`write_gguf`: ``model`` (fused, full precision), its ``config.json`` dict and the
        directory of its ``tokenizer.json``; ``dtype`` an ``mx.Dtype`` or a name (float16, float32)."""
        from lazarus.loader import parse_dtype

        return write_gguf(model, config, Path(tokenizer_dir), path, dtype=parse_dtype(dtype))


#: the registered ``gguf`` format (``lazarus.builtins``)
GGUF = GGUFFormat()
