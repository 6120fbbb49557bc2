"""The ``npz-legacy`` checkpoint format (read only): LoRA adapters saved as ``.npz`` by older tools.

Early mlx examples saved ``adapters.npz`` with keys in their own naming
(``layers.0.attention.wq.lora_a``, ``layers.0.feed_forward.w2.lora_b``) or in Hugging Face naming
without the ``model.`` prefix (``layers.0.self_attn.q_proj.lora_a``). Keys are renamed to today's
(``model.layers.0.self_attn.q_proj.lora_a``). Arrays are read with ``allow_pickle=False``: a file
that needs pickle is refused, since unpickling runs arbitrary code.

Without an ``adapter_config.json`` next to the file the configuration is inferred: LoRA (DoRA when
``.m`` tensors are present), rank from ``lora_a``, keys from the adapted layers, the adapted blocks
from the layer indices, and scale 20.0 (the constant those tools used) unless ``scale=`` is given.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from lazarus.checkpoints.base import AdapterCheckpoint, AdapterFormat, read_provenance
from lazarus.errors import LazarusError

#: old module names (mlx examples' llama) -> Hugging Face names used by Lazarus and mlx-lm
RENAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_LEVEL = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
LEGACY_DEFAULT_SCALE = 20.0


def modern_key(key: str) -> str:
    """Today's model key for a legacy key (``layers.0.attention.wq.lora_a`` ->
    ``model.layers.0.self_attn.q_proj.lora_a``); already-modern keys are returned unchanged."""
    match = _LAYER.match(key)
    if match:
        index, rest = match.groups()
        for old, new in RENAMES.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return f"model.layers.{index}.{rest}"
    head, _, rest = key.partition(".")
    if head in TOP_LEVEL:
        return TOP_LEVEL[head] + (f".{rest}" if rest else "")
    return key


class NpzLegacyFormat(AdapterFormat):
    name = "npz-legacy"
    holds = "adapter"

    @staticmethod
    def npz_file(path: Path) -> Path | None:
        path = Path(path)
        if path.is_file() and path.suffix == ".npz":
            return path
        if path.is_dir():
            if (path / "adapters.npz").is_file():
                return path / "adapters.npz"
            found = sorted(path.glob("*.npz"))
            if len(found) == 1:
                return found[0]
        return None

    def detect(self, path: Path) -> bool:
        return self.npz_file(path) is not None

    def read(self, path: str | Path, *, num_blocks: int | None = None, scale: float | None = None,
             **options) -> AdapterCheckpoint:
        """Read a legacy ``.npz`` adapter (a file, or a directory holding ``adapters.npz``).

        ``num_blocks`` (the base model's block count) turns the adapted layer indices into
        ``num_layers``; without it every block is assumed. ``scale`` overrides the inferred scale.
        """
        import mlx.core as mx
        import numpy as np

        from lazarus.adapters.config import AdapterConfig

        file = self.npz_file(Path(path))
        if file is None:
            raise LazarusError(f"{path}: no .npz adapter found (expected a .npz file or a directory "
                               "with adapters.npz)")
        weights = {}
        try:
            with np.load(file, allow_pickle=False) as data:
                for key in data.files:
                    try:
                        array = data[key]
                    except ValueError:
                        raise LazarusError(
                            f"{file}: key {key!r} holds pickled Python objects, which Lazarus refuses "
                            "to load (unpickling can run code); re-save the adapter with plain arrays"
                        ) from None
                    weights[modern_key(key)] = mx.array(array)
        except ValueError as exc:  # np.load refuses a pickle file when allow_pickle=False
            raise LazarusError(f"{file}: {' '.join(str(exc).split())}; Lazarus refuses pickled data, "
                               "re-save the adapter with plain arrays") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise LazarusError(f"{file}: not a readable .npz archive ({exc}); the file is corrupt") from None
        if not weights:
            raise LazarusError(f"{file}: the archive holds no arrays")

        if (file.parent / "adapter_config.json").is_file():
            config = AdapterConfig.from_file(file.parent / "adapter_config.json")
            if scale is not None:
                config.lora_parameters.scale = float(scale)
        else:
            config = self.infer_config(file, weights, num_blocks, scale)
        return AdapterCheckpoint(config=config, weights=weights, path=file, format=self.name,
                                 provenance=read_provenance(file.parent))

    @staticmethod
    def infer_config(file: Path, weights: dict, num_blocks: int | None, scale: float | None):
        from lazarus.adapters.config import AdapterConfig, LoraParameters

        lora_a = {k: v for k, v in weights.items() if k.endswith(".lora_a")}
        if not lora_a:
            raise LazarusError(f"{file}: no '.lora_a' arrays; only LoRA/DoRA adapters can be read from "
                               ".npz without an adapter_config.json next to it")
        ranks = {v.shape[-1] for v in lora_a.values()}
        if len(ranks) != 1:
            raise LazarusError(f"{file}: lora_a arrays have different ranks {sorted(ranks)}; "
                               "add an adapter_config.json next to the file")
        keys, indices = set(), set()
        for key in lora_a:
            match = _LAYER.match(key)
            if match:
                indices.add(int(match.group(1)))
                keys.add(match.group(2).rsplit(".", 1)[0])
            else:
                keys.add(key.rsplit(".", 1)[0])
        if num_blocks is not None and indices:
            num_layers = num_blocks - min(indices)
        else:
            num_layers = -1
        dora = any(k.endswith(".m") for k in weights)
        return AdapterConfig(
            fine_tune_type="dora" if dora else "lora",
            num_layers=num_layers,
            lora_parameters=LoraParameters(rank=ranks.pop(), dropout=0.0, keys=tuple(sorted(keys)),
                                           scale=LEGACY_DEFAULT_SCALE if scale is None else scale),
            extra={"converted_from": str(file)},
        )


#: the ``npz-legacy`` format registered by the core
NPZ_LEGACY = NpzLegacyFormat()
