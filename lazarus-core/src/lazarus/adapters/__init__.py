"""Adapters: LoRA, DoRA and full fine-tuning of the last N blocks, in mlx-lm's on-disk format.

Typical use (a trainer, or a user script)::

    from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter, save_adapter
    config = AdapterConfig(fine_tune_type="lora", num_layers=8,
                           lora_parameters=LoraParameters(rank=8, scale=20.0, keys=("self_attn.q_proj",)))
    apply_adapter(model, config)            # wraps the layers, freezes everything else
    params = trainable_parameters(model)    # what the optimizer updates
    ...
    save_adapter(model, "out/adapter", config, provenance={"data_sha256": ...})

    model, tokenizer, _ = lazarus.load_model("base")
    load_adapter(model, "out/adapter")      # applies and loads, checking every shape
    fuse_adapter(model)                     # folds LoRA/DoRA into plain linear layers

Adapter types are looked up in the plugin registry by ``fine_tune_type`` (built-ins ``lora``,
``dora``, ``full``), so a plugin can add one. Importing this package does not import mlx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lazarus.adapters.config import CONFIG_FILE, AdapterConfig, LoraParameters
from lazarus.errors import LazarusError

if TYPE_CHECKING:  # pragma: no cover
    import mlx.core as mx
    import mlx.nn as nn

    from lazarus.adapters.base import AdapterType
    from lazarus.checkpoints.base import AdapterCheckpoint


def get_adapter_type(name: str) -> AdapterType:
    """The adapter type registered as ``name`` (``lora``, ``dora``, ``full`` or a plugin's)."""
    from lazarus.plugins import get

    return get("adapter", name).load()


def apply_adapter(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Add the adapter described by ``config`` to ``model`` in place and freeze everything it does
    not train (LoRA/DoRA: only ``lora_a``, ``lora_b``, ``m`` train; full: the selected blocks).

    Raises :class:`LazarusError` for unknown types, keys that name no linear layer, too many
    layers, or a model that already carries an adapter. Returns ``model``.
    """
    adapter_type = get_adapter_type(config.fine_tune_type)
    adapter_type.apply(model, config)
    return model


def trainable_parameters(model: nn.Module) -> dict[str, mx.array]:
    """Flat ``{key: array}`` of the parameters an optimizer should update."""
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.trainable_parameters()))


def count_parameters(weights: dict) -> int:
    """Number of scalars in a flat ``{key: array}`` dict (quantized tensors count packed values)."""
    return int(sum(v.size for v in weights.values()))


def adapter_weights(model: nn.Module, config: AdapterConfig) -> dict[str, mx.array]:
    """The tensors :func:`save_adapter` writes, under mlx-lm's keys (``model.layers.0.self_attn.q_proj.lora_a``)."""
    return get_adapter_type(config.fine_tune_type).weights(model, config)


def fuse_adapter(model: nn.Module, config: AdapterConfig | None = None, dequantize: bool = False) -> nn.Module:
    """Fold the adapter into the base weights in place, leaving plain (trainable) linear layers.

    LoRA: ``W + scale * (lora_a @ lora_b).T``; DoRA: that, with each row rescaled to norm ``m``.
    ``config`` picks the adapter type (default: fold every LoRA/DoRA layer found). Quantized base
    layers are dequantized, updated and quantized again unless ``dequantize``. Returns ``model``.
    """
    name = config.fine_tune_type if config is not None else "lora"
    return get_adapter_type(name).fuse(model, dequantize=dequantize)


def save_adapter(model: nn.Module, path: str | Path, config: AdapterConfig,
                 provenance: dict | None = None) -> Path:
    """Atomically write the model's adapter to the directory ``path`` in mlx-lm's format
    (``adapter_config.json``, ``adapters.safetensors``, plus ``lazarus.json`` with ``provenance``
    merged in). mlx-lm loads the result with ``load(model, adapter_path=path)``. Returns ``path``."""
    from lazarus import checkpoints

    weights = adapter_weights(model, config)
    return checkpoints.save("mlx-lm", path, weights=weights, config=config, model=model,
                            provenance=provenance)


def read_adapter(path: str | Path, num_blocks: int | None = None) -> AdapterCheckpoint:
    """Read an adapter from disk without a model (any readable adapter format, detected from the
    files). ``num_blocks`` lets a legacy ``.npz`` infer ``num_layers``."""
    from lazarus.checkpoints import detect_adapter_format

    return detect_adapter_format(path).read(path, num_blocks=num_blocks)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> AdapterConfig:
    """Apply the adapter stored at ``path`` to ``model`` and load its tensors; returns its config.

    ``path``: an mlx-lm adapter directory (from Lazarus or mlx-lm), or a legacy ``.npz``. Every
    tensor must match a parameter of the applied adapter in key and shape; otherwise a one-line
    :class:`LazarusError` names the key, its shape and the expected one, and the model is
    restored to its state before the call.
    """
    from lazarus.adapters.base import model_blocks
    from lazarus.io import recover_output
    from lazarus.options import utf8_problem

    problem = utf8_problem(os.fspath(path))
    if problem:  # mlx cannot open files under such a path
        raise LazarusError(f"--adapter {os.fsencode(os.fspath(path))!r}: {problem}; mlx reads only UTF-8 paths: "
                           "rename or link the directory")
    blocks = len(model_blocks(model))
    checkpoint = read_adapter(recover_output(path, "--adapter"), num_blocks=blocks)
    config = checkpoint.config
    adapter_type = get_adapter_type(config.fine_tune_type)
    source = checkpoint.path
    if config.num_layers > blocks:
        raise _does_not_fit(source, config, model, f"it adapts {config.num_layers} blocks, this model has "
                                                   f"{blocks}")
    # keep the base weights a full adapter would overwrite, so a failed load can be undone
    before = adapter_type.weights(model, config) if adapter_type.replaces_weights else {}
    adapter_type.apply(model, config)
    try:
        expected = adapter_type.weights(model, config)
        unknown = [key for key in checkpoint.weights if key not in expected]
        if unknown:
            example = next(iter(expected), "none")
            raise _does_not_fit(source, config, model, f"its tensor {unknown[0]!r} (and {len(unknown) - 1} more) "
                                                       f"has no place in this model (its keys look like {example!r})")
        differing = [f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
                     for key, value in sorted(checkpoint.weights.items()) if tuple(value.shape) != tuple(expected[key].shape)]
        if differing:
            more = f" and {len(differing) - 2} more" if len(differing) > 2 else ""
            raise _does_not_fit(source, config, model, f"shapes differ (adapter vs model): "
                                                       f"{'; '.join(differing[:2])}{more}")
        missing = [key for key in expected if key not in checkpoint.weights]
        if missing:
            raise LazarusError(f"{source}: adapter lacks {missing[0]!r} (and {len(missing) - 1} more) that "
                               f"its config (num_layers={config.num_layers}, keys) implies; the files "
                               "are incomplete or the config was edited")
        weights = checkpoint.weights
        if adapter_type.replaces_weights:
            # full weights replace the model's own: keep the dtype the model was loaded in
            weights = {k: v.astype(expected[k].dtype) for k, v in weights.items()}
        model.load_weights(list(weights.items()), strict=False)
    except BaseException:
        remove_adapter(model)
        if before:
            model.load_weights(list(before.items()), strict=False)
        raise
    return config


def _does_not_fit(source, config: AdapterConfig, model, what: str) -> LazarusError:
    """The error for an adapter trained on another model: what differs, and which model it came from
    (its ``lazarus.json``, else the ``model`` its training recorded in ``adapter_config.json``)."""
    from lazarus import provenance

    directory = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        record = provenance.read(directory) or {}
    except (ValueError, OSError):  # an unreadable lazarus.json only costs the hint
        record = {}
    trained = record.get("source_model") if isinstance(record, dict) else None
    trained = trained if isinstance(trained, dict) else {}
    name = trained.get("model") or trained.get("path") or config.extra.get("model")
    family = f" ({trained['family']})" if trained.get("family") else ""
    origin = f"it was trained on {name}{family}" if name else "its files do not say which model it was trained on"
    this = getattr(getattr(model, "source", None), "model", None)
    if name and this and Path(str(name)).absolute() == Path(str(this)).absolute():
        return LazarusError(f"{source}: {what}, although it was trained on this model ({this}): its "
                            f"{CONFIG_FILE} does not match its weights (edited?)")
    return LazarusError(f"{source}: this adapter does not fit this model{f' ({this})' if this else ''}: "
                        f"{what}; {origin}. Load it onto that model.")


def remove_adapter(model: nn.Module) -> nn.Module:
    """Drop LoRA/DoRA layers without folding them in (the base layers come back unchanged) and
    make the model trainable again. Returns ``model``."""
    from mlx.utils import tree_unflatten

    from lazarus.adapters.lora import LoRALinear, unfreeze_plain

    restored = [(path, module.linear) for path, module in model.named_modules()
                if isinstance(module, LoRALinear)]
    if restored:
        model.update_modules(tree_unflatten(restored))
    unfreeze_plain(model)
    return model


__all__ = [
    "AdapterConfig",
    "LazarusError",
    "LoraParameters",
    "adapter_weights",
    "apply_adapter",
    "count_parameters",
    "fuse_adapter",
    "get_adapter_type",
    "load_adapter",
    "read_adapter",
    "remove_adapter",
    "save_adapter",
    "trainable_parameters",
]
