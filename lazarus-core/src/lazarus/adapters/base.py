"""What every adapter type shares: choosing blocks and target layers, and the adapter-type protocol.

An adapter type (registered with ``register_adapters``; ``entry`` names an :class:`AdapterType`
instance) knows three things: how to change a model in place (``apply``), which tensors make up
the adapter on disk (``weights``), and how to fold itself into plain layers (``fuse``).
Targets are found through ``model.blocks``, so every family works without special cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazarus.errors import LazarusError

if TYPE_CHECKING:  # pragma: no cover
    import mlx.core as mx
    import mlx.nn as nn

    from lazarus.adapters.config import AdapterConfig


def model_blocks(model) -> list:
    """The list of transformer blocks: ``model.blocks`` (Lazarus contract), else ``model.layers``."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        blocks = getattr(model, "layers", None)
    if blocks is None:
        raise LazarusError(f"{type(model).__name__} has no `blocks`; adapters need a model loaded with "
                           "lazarus.load_model")
    return list(blocks)


def select_blocks(model, num_layers: int) -> list:
    """The last ``num_layers`` blocks (all of them for ``num_layers`` <= 0, as in mlx-lm)."""
    blocks = model_blocks(model)
    if num_layers > len(blocks):
        raise LazarusError(f"num_layers={num_layers} but the model has only {len(blocks)} blocks; "
                           f"use at most {len(blocks)} (or -1 for all)")
    return blocks[-num_layers:] if num_layers > 0 else blocks


def module_paths(model) -> dict[int, str]:
    """id(module) -> its dotted path from the model root (``model.layers.3``), for naming weights."""
    return {id(module): name for name, module in model.named_modules()}


def block_prefixes(model, blocks: list) -> list[str]:
    """The dotted path of each block in ``blocks`` (``model.layers.0`` ...)."""
    paths = module_paths(model)
    try:
        return [paths[id(block)] for block in blocks]
    except KeyError:
        raise LazarusError("a block is not part of the model's module tree; adapters need "
                           "`model.blocks` to hold the model's own block modules") from None


def is_linear(module) -> bool:
    import mlx.nn as nn

    return isinstance(module, (nn.Linear, nn.QuantizedLinear))


def default_keys(blocks: list) -> tuple[str, ...]:
    """Paths (relative to a block) of every linear layer in any of ``blocks``, sorted.

    Like mlx-lm, defaults are gathered over all blocks, so a config written without ``keys``
    adapts the same layers in both tools.
    """
    keys = set()
    for block in blocks:
        for name, module in block.named_modules():
            if name and is_linear(module):
                keys.add(name)
    return tuple(sorted(keys))


class AdapterType:
    """Base of an adapter type. Subclasses set ``name`` and implement the three methods."""

    name: str = ""
    #: True when the adapter's tensors are the model's own weights, which loading it overwrites
    #: (full fine-tuning); False for types that add parameters beside them (LoRA, DoRA). Code asks
    #: this instead of comparing ``fine_tune_type`` with ``"full"``.
    replaces_weights: bool = False

    def apply(self, model: nn.Module, config: AdapterConfig) -> nn.Module:
        """Change ``model`` in place for training/inference with this adapter and freeze everything
        the adapter does not train. Returns ``model``."""
        raise NotImplementedError

    def weights(self, model: nn.Module, config: AdapterConfig) -> dict[str, mx.array]:
        """The tensors that make up the adapter, keyed as in ``adapters.safetensors``."""
        raise NotImplementedError

    def fuse(self, model: nn.Module, dequantize: bool = False) -> nn.Module:
        """Fold the adapter into plain layers of ``model`` (in place); returns ``model``."""
        raise NotImplementedError
