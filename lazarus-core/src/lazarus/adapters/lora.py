"""LoRA: a trainable low-rank update next to a frozen linear layer.

``y = W x + b + scale * (dropout(x) @ lora_a) @ lora_b`` with ``lora_a`` (in, r) and ``lora_b``
(r, out), ``lora_b`` starting at zero so a fresh adapter leaves the model unchanged. The wrapped
layer stays at ``.linear`` so the base weight keeps the key ``...q_proj.linear.weight`` and the
adapter's keys are ``...q_proj.lora_a`` / ``...q_proj.lora_b``: the names mlx-lm uses on disk.
Quantized base layers (``nn.QuantizedLinear``) are supported: the update is added in the input's
dtype and fusing dequantizes, adds, and quantizes again unless asked not to.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from lazarus.adapters.base import AdapterType, default_keys, is_linear, select_blocks
from lazarus.adapters.config import AdapterConfig
from lazarus.errors import LazarusError


def linear_dims(linear: nn.Module) -> tuple[int, int]:
    """(input_dims, output_dims) of a plain or quantized linear layer."""
    output_dims, input_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        input_dims = input_dims * 32 // linear.bits  # packed: 32 // bits values per uint32
    return input_dims, output_dims


def dense_weight(linear: nn.Module) -> mx.array:
    """The (out, in) weight of ``linear``, dequantized when it is quantized."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.biases, group_size=linear.group_size,
                             bits=linear.bits, mode=linear.mode)
    return linear.weight


def rebuild_linear(base: nn.Module, weight: mx.array, dequantize: bool) -> nn.Module:
    """A plain ``nn.Linear`` with ``weight`` (and ``base``'s bias); quantized like ``base`` unless
    ``dequantize``."""
    output_dims, input_dims = weight.shape
    has_bias = "bias" in base
    fused = nn.Linear(input_dims, output_dims, bias=has_bias)
    fused.weight = weight
    if has_bias:
        fused.bias = base.bias
    if isinstance(base, nn.QuantizedLinear) and not dequantize:
        fused = nn.QuantizedLinear.from_linear(fused, group_size=base.group_size, bits=base.bits,
                                               mode=base.mode)
    return fused


class LoRALinear(nn.Module):
    """A linear layer plus a low-rank update. Build it with :meth:`wrap` around an existing layer."""

    #: parameter leaves that belong to the adapter (saved to ``adapters.safetensors``)
    adapter_leaves: tuple[str, ...] = ("lora_a", "lora_b")

    def __init__(self, linear: nn.Module, rank: int = 8, scale: float = 20.0, dropout: float = 0.0):
        super().__init__()
        input_dims, output_dims = linear_dims(linear)
        self.linear = linear
        self.scale = scale
        self.dropout = nn.Dropout(p=dropout)
        # Uniform in +-1/sqrt(in) like nn.Linear's own init; lora_b = 0 makes the update start at 0.
        bound = 1.0 / math.sqrt(input_dims)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(input_dims, rank))
        self.lora_b = mx.zeros((rank, output_dims))

    @classmethod
    def wrap(cls, linear: nn.Module, rank: int, scale: float, dropout: float) -> LoRALinear:
        return cls(linear, rank=rank, scale=scale, dropout=dropout)

    def delta(self) -> mx.array:
        """The (out, in) weight update ``scale * (lora_a @ lora_b).T`` this adapter adds."""
        return (self.scale * self.lora_b.T) @ self.lora_a.T

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        update = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return y + (self.scale * update).astype(x.dtype)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """A plain linear layer computing the same function (``W + delta``)."""
        weight = dense_weight(self.linear)
        return rebuild_linear(self.linear, weight + self.delta().astype(weight.dtype), dequantize)


class LowRankAdapter(AdapterType):
    """Adapter type that wraps target linear layers of the last N blocks in ``layer_class``."""

    name = "lora"
    layer_class: type[LoRALinear] = LoRALinear

    def targets(self, model: nn.Module, config: AdapterConfig) -> list[tuple[nn.Module, str, nn.Module]]:
        """(owner, path relative to owner, linear layer) for every layer this config adapts.

        Keys are looked up in each selected block, and (as mlx-lm does) also from the model root,
        so a key like ``lm_head`` adapts the head. Raises when a key names no layer or a non-linear.
        """
        blocks = select_blocks(model, config.num_layers)
        for path, module in model.named_modules():
            if isinstance(module, self.adapter_layer_types()):
                raise LazarusError(f"layer {path!r} already carries an adapter; load the base model "
                                   "again (or fuse_adapter first) before applying another adapter")
        keys = config.keys if config.keys is not None else default_keys(blocks)
        found: list[tuple[nn.Module, str, nn.Module]] = []
        matched: set[str] = set()
        owners = [*blocks, model]
        for owner in owners:
            for path, module in owner.named_modules():
                if path not in keys:
                    continue
                if not is_linear(module):
                    raise LazarusError(f"adapter key {path!r} names a {type(module).__name__}, not a "
                                       "linear layer; use keys of linear layers such as self_attn.q_proj")
                found.append((owner, path, module))
                matched.add(path)
        unknown = [k for k in keys if k not in matched]
        if unknown:
            available = ", ".join(default_keys(blocks)) or "none"
            raise LazarusError(f"adapter key {unknown[0]!r} matches no layer of the selected blocks; "
                               f"linear layers there: {available}")
        return found

    @staticmethod
    def adapter_layer_types() -> tuple[type[nn.Module], ...]:
        # DoRALinear subclasses LoRALinear, so this covers both
        return (LoRALinear,)

    def apply(self, model: nn.Module, config: AdapterConfig) -> nn.Module:
        targets = self.targets(model, config)
        model.freeze()
        params = config.lora_parameters
        by_owner: dict[int, tuple[nn.Module, list]] = {}
        for owner, path, linear in targets:
            layer = self.layer_class.wrap(linear, rank=params.rank, scale=params.scale,
                                          dropout=params.dropout)
            layer.freeze()
            layer.unfreeze(keys=list(self.layer_class.adapter_leaves), recurse=False)
            layer.train(model.training)  # new modules start in training mode; dropout must follow the model
            by_owner.setdefault(id(owner), (owner, []))[1].append((path, layer))
        for owner, pairs in by_owner.values():
            owner.update_modules(tree_unflatten(pairs))
        return model

    def weights(self, model: nn.Module, config: AdapterConfig | None = None) -> dict[str, mx.array]:
        out = {}
        for path, module in model.named_modules():
            if isinstance(module, self.adapter_layer_types()):
                for leaf in module.adapter_leaves:
                    out[f"{path}.{leaf}"] = getattr(module, leaf)
        return dict(sorted(out.items()))

    def fuse(self, model: nn.Module, dequantize: bool = False) -> nn.Module:
        fused = [(path, module.fuse(dequantize=dequantize)) for path, module in model.named_modules()
                 if isinstance(module, self.adapter_layer_types())]
        if fused:
            model.update_modules(tree_unflatten(fused))
        unfreeze_plain(model)
        return model


def unfreeze_plain(model: nn.Module) -> None:
    """Make ``model`` trainable again as a freshly loaded one is, keeping quantized weights frozen."""
    model.unfreeze()
    for _, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            module.freeze(recurse=False)


#: the ``lora`` adapter type registered by the core
LORA = LowRankAdapter()
