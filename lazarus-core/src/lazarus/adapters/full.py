"""Full fine-tuning of the last N blocks: no extra layers, the blocks' own weights are trained.

The "adapter" on disk is every parameter of the selected blocks under its model key
(``model.layers.7.self_attn.q_proj.weight`` ...), which is what mlx-lm saves for
``fine_tune_type: full``. Loading it overwrites those weights.
"""

from __future__ import annotations

from typing import cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from lazarus.adapters.base import AdapterType, block_prefixes, select_blocks
from lazarus.adapters.config import AdapterConfig
from lazarus.errors import LazarusError


class FullAdapter(AdapterType):
    name = "full"
    replaces_weights = True

    def apply(self, model: nn.Module, config: AdapterConfig) -> nn.Module:
        blocks = select_blocks(model, config.num_layers)
        for block in blocks:
            for path, module in block.named_modules():
                if isinstance(module, nn.QuantizedLinear):
                    raise LazarusError(f"full fine-tuning needs unquantized weights but {path!r} is "
                                       "quantized; load a float checkpoint or use fine_tune_type lora")
        model.freeze()
        for block in blocks:
            block.unfreeze()
        return model

    def weights(self, model: nn.Module, config: AdapterConfig) -> dict[str, mx.array]:
        blocks = select_blocks(model, config.num_layers)
        out = {}
        for prefix, block in zip(block_prefixes(model, blocks), blocks, strict=True):
            for key, value in cast("list[tuple[str, mx.array]]", tree_flatten(block.parameters())):
                out[f"{prefix}.{key}"] = value
        return dict(sorted(out.items()))

    def fuse(self, model: nn.Module, dequantize: bool = False) -> nn.Module:
        # The trained weights already are the model's weights: nothing to fold.
        model.unfreeze()
        return model


#: the ``full`` adapter type registered by the core
FULL = FullAdapter()
