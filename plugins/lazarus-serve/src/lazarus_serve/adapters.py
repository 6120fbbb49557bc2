"""Several LoRA adapters over one base model, chosen per batch row.

Each adapter is loaded once through the core (``lazarus.adapters.load_adapter``, so an adapter that
does not fit the model fails with the core's message), its ``lora_a`` / ``lora_b`` tensors are
kept, and the base layers are restored. Every linear layer that any adapter touches is then
wrapped in a :class:`MultiLoRALinear` holding all adapters' tensors stacked (index 0 is the base:
zeros). Before each forward pass :class:`AdapterSet` is told which adapter each batch row uses:

- all rows on one adapter (or the base): the layer computes exactly what ``LoRALinear`` computes
  (``W x + scale * (x @ A) @ B``), so a lone request's text equals ``lazarus generate --adapter``;
- mixed rows: each row's ``A`` and ``B`` are gathered and applied as one batched matmul, so
  requests for different adapters (and the base) decode together in one batch.

DoRA and full fine-tunes change the base weights themselves and cannot share a batch this way:
they are refused with a hint to fuse them into a model of their own.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from lazarus.errors import LazarusError

BASE = 0


class AdapterSet:
    """Which adapter each row of the current forward pass uses; shared by every MultiLoRALinear."""

    def __init__(self, names: list[str]):
        self.names = names  # index i + 1 is names[i]; 0 is the base model
        self.single: int | None = BASE
        self.rows: mx.array | None = None

    def select(self, indices: list[int]) -> None:
        """Set the adapter index of each row (0 = base) for the next forward pass."""
        if len(set(indices)) == 1:
            self.single, self.rows = indices[0], None
        else:
            self.single, self.rows = None, mx.array(indices, dtype=mx.int32)


class _Own:
    """A plain holder, so these tensors stay out of the module's parameter tree."""

    def __init__(self, tensors):
        self.tensors = tensors


class MultiLoRALinear(nn.Module):
    """A linear layer plus one low-rank update per adapter, picked per row by an :class:`AdapterSet`."""

    def __init__(self, linear: nn.Module, lora_a: mx.array, lora_b: mx.array, scales: list[float],
                 present: list[bool], adapters: AdapterSet, own: dict[int, tuple[mx.array, mx.array]]):
        super().__init__()
        self.linear = linear
        self.lora_a = lora_a  # (N + 1, in, r): index 0 (the base) and adapters without this layer are 0
        self.lora_b = lora_b  # (N + 1, r, out)
        self.scale_list = scales
        self.scales = mx.array(scales, dtype=mx.float32)
        self.present = present
        self.adapters = adapters
        self.own = _Own(own)  # each adapter's unpadded tensors, for batches on one adapter
        self.freeze()

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        single = self.adapters.single
        if single is not None:
            if not self.present[single]:
                return y
            a, b = self.own.tensors[single]
            update = (x @ a) @ b
            return y + (self.scale_list[single] * update).astype(x.dtype)
        rows = self.adapters.rows
        if x.ndim == 2:  # no batch axis: one row
            x = x[None]
        update = (x @ self.lora_a[rows]) @ self.lora_b[rows]  # (B, T, in) @ (B, in, r) @ (B, r, out)
        return y + (self.scales[rows][:, None, None] * update).astype(x.dtype)


def load_adapters(model, adapters: dict[str, str]) -> AdapterSet:
    """Load each ``name -> directory`` LoRA adapter onto ``model`` side by side; returns the
    :class:`AdapterSet` that picks among them. The base weights stay as they are."""
    from lazarus.adapters import load_adapter, remove_adapter
    from lazarus.adapters.lora import LoRALinear

    per_adapter: list[dict[str, tuple[mx.array, mx.array, float]]] = []
    for name, path in adapters.items():
        config = load_adapter(model, path)
        layers = {p: (m.lora_a, m.lora_b, float(m.scale)) for p, m in model.named_modules()
                  if isinstance(m, LoRALinear)}
        remove_adapter(model)
        if config.fine_tune_type != "lora":
            raise LazarusError(
                f"--adapter {name}={path}: a {config.fine_tune_type} adapter changes the base weights, so it "
                "cannot share a batch with other adapters; fuse it (lazarus adapters fuse ...) and serve "
                "the fused model with its own `lazarus serve`")
        per_adapter.append(layers)
    model.freeze()
    selector = AdapterSet(list(adapters))
    modules = dict(model.named_modules())
    wrapped = []
    for path in sorted({p for layers in per_adapter for p in layers}):
        base = modules[path]
        shapes = [layers[path] for layers in per_adapter if path in layers]
        rank = max(a.shape[1] for a, _, _ in shapes)
        in_dims, out_dims = shapes[0][0].shape[0], shapes[0][1].shape[1]
        dtype = shapes[0][0].dtype
        a_stack = [mx.zeros((in_dims, rank), dtype)]
        b_stack = [mx.zeros((rank, out_dims), dtype)]
        scales, present, own = [0.0], [False], {}
        for index, layers in enumerate(per_adapter, start=1):
            a, b, scale = layers.get(path, (None, None, 0.0))
            if a is None or b is None:  # (both or neither) padded with zeros: this adapter leaves the layer alone
                a, b = mx.zeros((in_dims, rank), dtype), mx.zeros((rank, out_dims), dtype)
            else:  # ranks differ between adapters: zero columns add nothing
                own[index] = (a, b)
                a = mx.concatenate([a, mx.zeros((in_dims, rank - a.shape[1]), a.dtype)], axis=1)
                b = mx.concatenate([b, mx.zeros((rank - b.shape[0], out_dims), b.dtype)], axis=0)
            a_stack.append(a.astype(dtype))
            b_stack.append(b.astype(dtype))
            scales.append(scale)
            present.append(path in layers)
        wrapped.append((path, MultiLoRALinear(base, mx.stack(a_stack), mx.stack(b_stack), scales, present,
                                              selector, own)))
    if wrapped:
        model.update_modules(tree_unflatten(wrapped))
    # everything now, on this thread: a lazy array cannot be evaluated on another thread's stream
    mx.eval(model.parameters(), [layer.own.tensors for _, layer in wrapped])
    return selector
