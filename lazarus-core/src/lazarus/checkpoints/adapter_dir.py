"""The ``mlx-lm`` checkpoint format: mlx-lm's adapter directory, readable and writable both ways.

Layout: ``adapter_config.json`` (see :class:`lazarus.adapters.AdapterConfig`), ``adapters.safetensors``
(the adapter tensors under model keys such as ``model.layers.0.self_attn.q_proj.lora_a``, written
with ``mx.save_safetensors`` and the ``{"format": "mlx"}`` metadata mlx-lm writes) and Lazarus's
``lazarus.json``. mlx-lm ignores ``lazarus.json``; Lazarus reads directories mlx-lm wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from lazarus.checkpoints.base import AdapterCheckpoint, AdapterFormat, read_provenance, write_provenance
from lazarus.errors import LazarusError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"


def load_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file as mx arrays; a corrupt file is a LazarusError naming it."""
    import mlx.core as mx

    try:
        return dict(cast("dict[str, mx.array]", mx.load(str(path), format="safetensors")))  # (one file: a dict)
    except (RuntimeError, ValueError, OSError) as exc:
        raise LazarusError(f"{path}: cannot read safetensors ({' '.join(str(exc).split())}); "
                           "the file is corrupt or incomplete, save it again") from None


class MlxLmAdapterFormat(AdapterFormat):
    name = "mlx-lm"
    holds = "adapter"

    def detect(self, path: Path) -> bool:
        path = Path(path)
        return (path.is_dir() and (path / WEIGHTS_FILE).is_file()) or (
            path.is_file() and path.name.endswith(".safetensors") and (path.parent / CONFIG_FILE).is_file())

    def owned(self, name: str) -> bool:
        return name in (CONFIG_FILE, WEIGHTS_FILE) or super().owned(name)

    def read(self, path: str | Path, **options) -> AdapterCheckpoint:
        """Read an adapter directory (or its ``adapters.safetensors``) into an :class:`AdapterCheckpoint`."""
        from lazarus.adapters.config import AdapterConfig

        path = Path(path)
        weights_file = path if path.is_file() else path / WEIGHTS_FILE
        directory = weights_file.parent
        if not directory.exists():
            raise LazarusError(f"{directory}: adapter directory not found")
        config = AdapterConfig.from_file(directory / CONFIG_FILE)
        if not weights_file.is_file():
            raise LazarusError(f"{weights_file}: not found; an mlx-lm adapter directory holds "
                               f"{CONFIG_FILE} and {WEIGHTS_FILE}")
        weights = load_safetensors(weights_file)
        return AdapterCheckpoint(config=config, weights=weights, path=directory, format=self.name,
                                 provenance=read_provenance(directory))

    def write(self, path: str | Path, *, weights: dict, config: Any, model=None,
              provenance: dict | None = None) -> Path:
        """Atomically write ``weights`` (key -> mx.array) and ``config`` (an AdapterConfig) to the
        directory ``path``, plus ``lazarus.json``: the source of ``model`` (when given, as loaded by
        ``lazarus.load_model``) and the ``provenance`` fields (see
        :func:`lazarus.checkpoints.base.provenance_record`). Returns the path."""
        import mlx.core as mx

        from lazarus.io import atomic_directory

        if not weights:
            raise LazarusError(f"{path}: refusing to save an empty adapter; apply an adapter to the model "
                               "first (lazarus.adapters.apply_adapter)")
        target = Path(path)
        with atomic_directory(target, owned=self.owned) as tmp:
            mx.eval(list(weights.values()))
            mx.save_safetensors(str(tmp / WEIGHTS_FILE), dict(weights), metadata={"format": "mlx"})
            (tmp / CONFIG_FILE).write_text(config.to_json())
            write_provenance(tmp, self.name, self.holds, model=model, fields={
                "adapter_config": tmp / CONFIG_FILE, "fine_tune_type": config.fine_tune_type,
                **(provenance or {})})
        return target


#: the ``mlx-lm`` format registered by the core
MLX_LM = MlxLmAdapterFormat()
