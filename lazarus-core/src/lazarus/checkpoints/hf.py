"""The ``hf`` checkpoint format: a whole model in Hugging Face layout, for fused or fully trained models.

Layout: ``config.json``; ``model.safetensors``, or above ``max_shard_size`` the shards
``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json`` (``metadata.total_size``
and ``weight_map``); the tokenizer files copied from the source checkpoint; ``lazarus.json``.
Weights are saved under the model's own parameter keys, which are the Hugging Face names, so
``lazarus.load_model`` (and mlx-lm) load the result unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from lazarus.checkpoints.base import ModelFormat, write_provenance
from lazarus.errors import LazarusError
from lazarus.loader import parse_dtype

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # Hugging Face's default shard size, 5 GB
#: files copied from the source checkpoint: tokenizer, chat template and generation defaults
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
    "chat_template.json", "generation_config.json",
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = (match.group(2) or "").lower() if match else None
        if not match or unit not in _UNITS:
            raise LazarusError(f"shard size {value!r} is not a size; write it like 5GB, 500MB or 2GiB")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise LazarusError(f"shard size must be positive, got {value!r}")
    return size


def dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def model_weights(model) -> dict:
    """The model's tensors under their Hugging Face keys.

    ``model.hf_weights()`` (the model contract: the flattened parameters unless the family's module
    tree differs from its checkpoint layout). A model still carrying adapter layers is refused:
    fuse it first.
    """
    weights = dict(model.hf_weights())
    for key in weights:
        if key.endswith((".lora_a", ".lora_b")) or ".linear." in key:
            raise LazarusError(f"the model still carries adapter layers ({key}); fold them in with "
                               "lazarus.adapters.fuse_adapter(model) before saving it in hf format")
    return weights


def make_shards(weights: dict, max_bytes: int) -> list[dict]:
    """Split ``weights`` (in key order) into shards of at most ``max_bytes`` (one tensor per shard
    if a single tensor is larger)."""
    shards: list[dict] = [{}]
    size = 0
    for key in sorted(weights):
        nbytes = weights[key].nbytes
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = weights[key]
        size += nbytes
    return shards


def _has_quantized_layers(model) -> bool:
    import mlx.nn as nn

    return model is not None and any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


class HFModelFormat(ModelFormat):
    name = "hf"
    holds = "model"

    def detect(self, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and (path / CONFIG_FILE).is_file() and any(path.glob("*.safetensors"))

    def owned(self, name: str) -> bool:
        return (name in (CONFIG_FILE, INDEX_FILE, *TOKENIZER_FILES) or name.endswith(".safetensors")
                or super().owned(name))

    def read(self, path: str | Path, *, dtype=None, adapter_path=None, **options) -> tuple[Any, Any, dict]:
        """Read the Hugging Face layout directory ``path``: ``(model, tokenizer, config)``;
        ``adapter_path`` applies an adapter on top (through :func:`lazarus.load_model`)."""
        from lazarus.loader import load_model, read_hf_model

        if adapter_path is not None:
            return load_model(str(path), adapter_path=adapter_path, dtype=dtype)
        return read_hf_model(Path(path), dtype=dtype)

    def write(self, path: str | Path, *, model=None, weights: dict | None = None,
              config: dict | None = None, source: str | Path | None = None, dtype=None,
              max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, provenance: dict | None = None) -> Path:
        """Atomically write a full model to the directory ``path`` in Hugging Face layout.

        ``model`` (its parameters are saved) or ``weights`` (key -> mx.array). ``config``: the
        ``config.json`` dict; taken from ``source/config.json`` when omitted. ``source``: the
        checkpoint directory (or hub id) the model came from, by default the directory
        ``lazarus.load_model`` read it from (tokenizer files are copied from it and its weight
        hashes go into ``lazarus.json``). ``dtype``: cast floating tensors (and set
        ``torch_dtype``). ``max_shard_size``: bytes or "5GB"; larger models are sharded with an
        index. ``provenance``: extra ``lazarus.json`` fields. Returns the path.
        """
        import mlx.core as mx

        from lazarus.io import atomic_directory

        if (model is None) == (weights is None):
            raise LazarusError("hf format: pass exactly one of model= or weights=")
        source = self._source_dir(source, model)
        weights = model_weights(model) if weights is None else dict(weights)
        if not weights:
            raise LazarusError(f"{path}: refusing to save a model without weights")
        target_dtype = parse_dtype(dtype)
        if target_dtype is not None:
            weights = {k: v.astype(target_dtype) if mx.issubdtype(v.dtype, mx.floating) else v
                       for k, v in weights.items()}
        config = self._config(config, source, model, target_dtype)
        max_bytes = parse_size(max_shard_size)

        target = Path(path)
        with atomic_directory(target, owned=self.owned) as tmp:
            shards = make_shards(weights, max_bytes)
            weight_map = {}
            for number, shard in enumerate(shards, start=1):
                name = ("model.safetensors" if len(shards) == 1
                        else f"model-{number:05d}-of-{len(shards):05d}.safetensors")
                mx.eval(list(shard.values()))
                mx.save_safetensors(str(tmp / name), shard, metadata={"format": "mlx"})
                weight_map.update(dict.fromkeys(shard, name))
            if len(shards) > 1:
                index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                         "weight_map": dict(sorted(weight_map.items()))}
                (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            if source is not None:
                for name in TOKENIZER_FILES:
                    if (source / name).is_file():
                        shutil.copy2(source / name, tmp / name)
            fields: dict[str, Any] = {"config": tmp / CONFIG_FILE}
            if source is not None and getattr(model, "source", None) is None:
                fields |= {"source_model": str(source), "source_path": str(source.absolute()),
                           "weight_files": sorted(source.glob("*.safetensors"))}
            write_provenance(tmp, self.name, self.holds, model=model, fields=fields | (provenance or {}))
        return target

    @staticmethod
    def _source_dir(source: str | Path | None, model) -> Path | None:
        """The local directory of the source checkpoint: ``source`` when it is one; otherwise (a hub
        id, or nothing given) the directory ``lazarus.load_model`` read the model from."""
        if source is not None and Path(source).is_dir():
            return Path(source)
        loaded_from = getattr(getattr(model, "source", None), "path", None)
        if loaded_from and Path(loaded_from).is_dir():
            return Path(loaded_from)
        if source is not None:
            raise LazarusError(f"{source}: source checkpoint directory not found; pass the local directory "
                               "the model was loaded from")
        return None

    @staticmethod
    def _config(config: dict | None, source: Path | None, model, dtype) -> dict:
        if config is None:
            if source is None or not (source / CONFIG_FILE).is_file():
                raise LazarusError("hf format: pass config= (the config.json dict) or source= (the "
                                   "checkpoint directory the model came from)")
            config = json.loads((source / CONFIG_FILE).read_text())
        if not isinstance(config, dict):
            raise LazarusError(f"hf format: config must be the config.json dict, got {type(config).__name__}")
        config = dict(config)
        if dtype is not None:
            config["torch_dtype"] = dtype_name(dtype)
        if model is not None and not _has_quantized_layers(model):
            # a dequantized (or never quantized) model must not announce a quantization
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        return config


#: the ``hf`` format registered by the core
HF = HFModelFormat()
