"""Checkpoint formats: how adapters and models are written to and read from disk.

Built-in formats (registered by ``lazarus.builtins``, looked up through the plugin registry so
plugins can add more):

- ``mlx-lm``: mlx-lm's adapter directory (``adapter_config.json`` + ``adapters.safetensors``)
- ``hf``: a whole model in Hugging Face layout (``config.json``, sharded safetensors, tokenizer)
- ``npz-legacy``: read-only, old ``.npz`` LoRA adapters

Every write is atomic (see :mod:`lazarus.io`) and adds ``lazarus.json``.

    from lazarus import checkpoints
    checkpoints.save("mlx-lm", "out/adapter", weights=..., config=adapter_config)
    checkpoints.save("hf", "out/fused", model=model, source="path/to/base")
    ckpt = checkpoints.load("mlx-lm", "out/adapter")    # AdapterCheckpoint (an AdapterFormat)
    model, tokenizer, config = checkpoints.load("hf", "out/fused")   # a ModelFormat

Trainers usually call :func:`lazarus.adapters.save_adapter` instead of ``save("mlx-lm", ...)``.
This module imports no mlx at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lazarus.checkpoints.base import (
    PROVENANCE_FILE,
    AdapterCheckpoint,
    AdapterFormat,
    CheckpointFormat,
    ModelFormat,
    read_provenance,
    write_provenance,
)
from lazarus.errors import LazarusError
from lazarus.io import atomic_directory

if TYPE_CHECKING:  # pragma: no cover
    from lazarus.specs import CheckpointFormatSpec


def _spec(name: str) -> CheckpointFormatSpec:
    from lazarus.plugins import get
    from lazarus.specs import CheckpointFormatSpec

    spec = get("checkpoint-format", name)
    assert isinstance(spec, CheckpointFormatSpec)  # the registry files specs by kind
    return spec


def _readable(first: str) -> list[CheckpointFormatSpec]:
    """The registered readable formats, ``first`` first and then by name."""
    from lazarus.plugins import get_registry
    from lazarus.specs import CheckpointFormatSpec

    specs = [spec for spec in get_registry().all("checkpoint-format").values()
             if isinstance(spec, CheckpointFormatSpec) and spec.can_read]
    return sorted(specs, key=lambda spec: (spec.name != first, spec.name))


def get_format(name: str) -> CheckpointFormat:
    """The format object registered under ``name`` (``mlx-lm``, ``hf``, ``npz-legacy``, or a plugin's)."""
    from lazarus.plugins import get

    return get("checkpoint-format", name).load()


def save(format_name: str, path: str | Path, **options) -> Path:
    """Write a checkpoint at ``path`` in the named format; ``options`` are that format's ``write``
    arguments. Raises :class:`LazarusError` for a read-only format."""
    spec = _spec(format_name)
    if not spec.can_write:
        raise LazarusError(f"checkpoint format {format_name!r} is read-only; save with 'mlx-lm' "
                           "(adapters) or 'hf' (models)")
    return spec.load().write(path, **options)


def load(format_name: str, path: str | Path, **options):
    """Read the checkpoint at ``path`` in the named format (an :class:`AdapterCheckpoint` for
    adapter formats, ``(model, tokenizer, config)`` for ``hf``)."""
    spec = _spec(format_name)
    if not spec.can_read:
        raise LazarusError(f"checkpoint format {format_name!r} is write-only")
    return spec.load().read(path, **options)


def detect_model_format(path: str | Path) -> ModelFormat:
    """The readable model format whose layout the local ``path`` has: every registered format that
    holds models is asked (``hf`` first, then by name). When none recognises it the ``hf`` format
    is returned, whose ``read`` says precisely what is missing."""
    path = Path(path)
    fallback = None
    for spec in _readable("hf"):
        fmt = spec.load()
        if fmt.holds != "model":
            continue
        fallback = fallback or fmt
        if fmt.detect(path):
            return fmt
    if fallback is None:
        raise LazarusError(f"{path}: no installed checkpoint format reads models; reinstall lazarus-core")
    return fallback


def detect_adapter_format(path: str | Path) -> AdapterFormat:
    """The readable adapter format whose layout ``path`` has (``mlx-lm`` first, then the others).

    Raises :class:`LazarusError` naming the path when no format recognises it.
    """
    path = Path(path)
    if not path.exists():
        raise LazarusError(f"{path}: adapter path not found")
    for spec in _readable("mlx-lm"):
        fmt = spec.load()
        if fmt.holds == "adapter" and fmt.detect(path):
            return fmt
    raise LazarusError(f"{path}: not an adapter checkpoint (expected a directory with adapter_config.json "
                       "and adapters.safetensors, or a legacy .npz)")


__all__ = [
    "PROVENANCE_FILE",
    "AdapterCheckpoint",
    "AdapterFormat",
    "CheckpointFormat",
    "ModelFormat",
    "atomic_directory",
    "detect_adapter_format",
    "detect_model_format",
    "get_format",
    "load",
    "read_provenance",
    "save",
    "write_provenance",
]
