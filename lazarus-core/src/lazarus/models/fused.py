"""Fused projections, on disk and at run time.

On disk: checkpoints that store several linear layers as one (Phi-3's ``qkv_proj`` and
``gate_up_proj``) load into the separate layers every family has, and are written back fused
(:func:`split_fused`, :func:`join_fused`).

At run time: :func:`fuse_projections` makes the layers that read one input (q/k/v, gate/up) one
matmul (:class:`ProjectionGroup`), so a decoded token launches fewer, bigger kernels; the separate
layers stay, as views of the fused weight, for adapters, hooks, training and saving.

A family describes its fused layers as ``{fused suffix: ((part suffix, rows), ...)}``, e.g.
``{"self_attn.qkv_proj": (("self_attn.q_proj", 3072), ("self_attn.k_proj", 1024), ...)}``. The
parts are stacked along the output axis (rows of the (out, in) weight), so quantized tensors
(``weight``, ``scales``, ``biases``: groups run along the input axis) split and join the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import mlx.core as mx
import mlx.nn as nn

from lazarus.errors import LazarusError

Fused = dict[str, tuple[tuple[str, int], ...]]
_LEAVES = ("weight", "bias", "scales", "biases")


def _split_key(key: str, suffixes) -> tuple[str, str, str] | None:
    """``(prefix, suffix, leaf)`` when ``key`` is ``{prefix}.{suffix}.{leaf}`` for one of ``suffixes``."""
    stem, _, leaf = key.rpartition(".")
    if leaf not in _LEAVES:
        return None
    for suffix in suffixes:
        if stem == suffix or stem.endswith("." + suffix):
            return stem[: len(stem) - len(suffix)], suffix, leaf
    return None


def split_fused(weights: dict[str, mx.array], fused: Fused) -> dict[str, mx.array]:
    """Replace every fused tensor by its parts (row slices in the declared order)."""
    out = {}
    for key, value in weights.items():
        found = _split_key(key, fused)
        if found is None:
            out[key] = value
            continue
        prefix, suffix, leaf = found
        parts = fused[suffix]
        total = sum(rows for _, rows in parts)
        if value.shape[0] != total:
            raise LazarusError(f"tensor {key!r} has {value.shape[0]} rows, but config.json implies "
                               f"{' + '.join(str(r) for _, r in parts)} = {total} for "
                               f"{', '.join(name for name, _ in parts)}")
        start = 0
        for name, rows in parts:
            out[f"{prefix}{name}.{leaf}"] = value[start:start + rows]
            start += rows
    return out


def join_fused(weights: dict[str, mx.array], fused: Fused) -> dict[str, mx.array]:
    """The inverse of :func:`split_fused`: concatenate the parts back into the fused tensors."""
    part_of = {name: suffix for suffix, parts in fused.items() for name, _ in parts}
    out: dict[str, mx.array] = {}
    pending: dict[tuple[str, str, str], dict[str, mx.array]] = {}
    for key, value in weights.items():
        found = _split_key(key, part_of)
        if found is None:
            out[key] = value
            continue
        prefix, name, leaf = found
        pending.setdefault((prefix, part_of[name], leaf), {})[name] = value
    for (prefix, suffix, leaf), pieces in pending.items():
        names = [name for name, _ in fused[suffix]]
        missing = [n for n in names if n not in pieces]
        if missing:
            raise LazarusError(f"cannot fuse {prefix}{suffix}.{leaf}: {prefix}{missing[0]}.{leaf} is missing")
        out[f"{prefix}{suffix}.{leaf}"] = mx.concatenate([pieces[n] for n in names], axis=0)
    return out


# -- inference: the projections of one input as one matmul ------------------------------------------
#: LAZARUS_FUSED_PROJECTIONS=0 keeps every projection its own matmul (for comparisons)
FUSE_AT_LOAD = os.environ.get("LAZARUS_FUSED_PROJECTIONS", "1") != "0"
_trusted = 0  # > 0 while a compiled step is traced right after refresh_fused() checked every group


class ProjectionGroup:
    """Linear layers that read the same input (q/k/v, gate/up) computed as one matmul.

    Made by :func:`fuse_projections`. The parts' leaves (``weight``, ``bias``, ``scales``,
    ``biases``) are concatenated along the output rows once, and each part's leaves become row
    slices of the result (views of its buffer), so memory is unchanged and every module,
    parameter name, adapter, hook and checkpoint key stays where it was.

    ``group(owner, x)`` returns the parts' outputs (``head_dim``: shaped ``(..., heads, head_dim)``),
    or None when the owner must run its separate
    layers: a part was replaced by anything but a LoRA layer around it (whose update is then added
    exactly as :class:`~lazarus.adapters.lora.LoRALinear` adds it), or a part's weight is not the
    array fused (swapped, traced by ``value_and_grad`` or a compiled training step, reloaded), or
    the owner trains its base weights (the fused copy is then released so that a full fine-tune
    does not hold the weights twice). :func:`refresh_fused` re-fuses what changed for good.
    """

    def __init__(self, names: tuple[str, ...], bases: list, leaves: dict[str, mx.array], quant: dict | None):
        self.names = names
        self.bases = tuple(bases)
        self.weights = tuple(b["weight"] for b in bases)  # by identity
        self.leaves: dict[str, mx.array] | None = leaves
        self.quant = quant
        rows = [int(b["weight"].shape[0]) for b in bases]
        self.splits = [sum(rows[:i + 1]) for i in range(len(rows) - 1)]

    @classmethod
    def build(cls, owner, names: tuple[str, ...]) -> ProjectionGroup | None:
        """The group of ``owner``'s layers ``names`` (plain or inside a LoRA layer), or None when
        they cannot be fused: not all ``nn.Linear`` (or all ``nn.QuantizedLinear`` of one setting),
        or other dtypes, leaves or input sizes."""
        lora = _lora_class()
        modules = [owner.get(name) for name in names]
        bases = [m["linear"] if type(m) is lora else m for m in modules]
        kind = type(bases[0])
        if kind not in (nn.Linear, nn.QuantizedLinear) or any(type(b) is not kind for b in bases):
            return None
        quant = None
        if kind is nn.QuantizedLinear:
            quant = {"group_size": bases[0].group_size, "bits": bases[0].bits, "mode": bases[0].mode}
            if any((b.group_size, b.bits, b.mode) != tuple(quant.values()) for b in bases):
                return None
        leaf_names = sorted(k for k, v in bases[0].items() if isinstance(v, mx.array))
        for b in bases:
            if sorted(k for k, v in b.items() if isinstance(v, mx.array)) != leaf_names:
                return None
            if any(b[k].dtype != bases[0][k].dtype or b[k].shape[1:] != bases[0][k].shape[1:] for k in leaf_names):
                return None
        leaves = {k: mx.concatenate([b[k] for b in bases], axis=0) for k in leaf_names}
        mx.eval(leaves)
        start = 0
        for b in bases:
            rows = b["weight"].shape[0]
            for k in leaf_names:
                b[k] = leaves[k][start:start + rows]  # a view of the fused buffer: no second copy
            start += rows
        mx.eval([[b[k] for k in leaf_names] for b in bases])
        return cls(tuple(names), bases, leaves, quant)

    def _loras(self, owner, check_weights: bool) -> dict | None:
        """``{part index: LoRA layer}`` when the group computes the owner's layers, else None."""
        if self.leaves is None:
            return None
        loras = {}
        for i, (name, base, weight) in enumerate(zip(self.names, self.bases, self.weights, strict=True)):
            module = owner[name]
            if module is not base:
                if type(module) is not _lora_class() or module["linear"] is not base:
                    return None
                loras[i] = module
            if check_weights and base["weight"] is not weight:
                return None
        return loras

    def refresh(self, owner) -> bool:
        """Whether the group still computes the owner's layers. Weights that are other arrays
        with the fused values (a compiled training step hands back new arrays for frozen weights)
        are adopted; other values, or replaced layers, make it False."""
        if self.leaves is None or self._loras(owner, check_weights=False) is None:
            return False
        if all(b["weight"] is w for b, w in zip(self.bases, self.weights, strict=True)):
            return True
        same, start = [], 0
        for b in self.bases:
            rows = b["weight"].shape[0]
            for k, fused in self.leaves.items():
                leaf = b.get(k)
                if leaf is None or leaf.shape != fused[start:start + rows].shape:
                    return False
                same.append(mx.array_equal(leaf, fused[start:start + rows]))
            start += rows
        if not mx.all(mx.stack(same)).item():
            return False
        self.weights = tuple(b["weight"] for b in self.bases)
        return True

    def __call__(self, owner, x: mx.array, head_dim: int | None = None) -> Sequence[mx.array] | None:
        if owner.training and any("weight" not in b._no_grad for b in self.bases):
            self.leaves = None  # the base weights train: let the fused copy go
            return None
        loras = self._loras(owner, check_weights=not _trusted)
        leaves = self.leaves
        if loras is None or leaves is None:  # (no leaves: no loras either)
            return None
        if self.quant is None:
            y = mx.addmm(leaves["bias"], x, leaves["weight"].T) if "bias" in leaves else x @ leaves["weight"].T
        else:
            y = mx.quantized_matmul(x, leaves["weight"], scales=leaves["scales"], biases=leaves.get("biases"),
                                    transpose=True, **self.quant)
            if "bias" in leaves:
                y = y + leaves["bias"]
        if head_dim:  # (..., heads, head_dim) parts: split whole heads, so no part needs a copy to reshape
            y = y.reshape(*y.shape[:-1], -1, head_dim)
            parts = cast("list[mx.array]", mx.split(y, [s // head_dim for s in self.splits], axis=-2))
        else:  # (mlx's stub says split returns an array: it returns a list)
            parts = cast("list[mx.array]", mx.split(y, self.splits, axis=-1))
        for i, lora in loras.items():  # as LoRALinear.__call__ adds its update
            update = (lora.scale * ((lora.dropout(x) @ lora["lora_a"]) @ lora["lora_b"])).astype(x.dtype)
            parts[i] = parts[i] + (update.reshape(parts[i].shape) if head_dim else update)
        return parts


def _lora_class():
    from lazarus.adapters.lora import LoRALinear

    return LoRALinear


#: module attribute holding each kind of group -> the layers it fuses
GROUPS = {"_qkv": ("q_proj", "k_proj", "v_proj"), "_gate_up": ("gate_proj", "up_proj")}


def _owners(model):
    return model.__dict__.get("_lazarus_fused_owners", ())


def fuse_projections(model) -> int:
    """Fuse q/k/v and gate/up of every module of ``model`` that declares them (an attribute of
    :data:`GROUPS` set to None: Lazarus's attention and gated MLP); returns how many groups were
    made. :func:`lazarus.load_model` does it unless ``LAZARUS_FUSED_PROJECTIONS=0``."""
    owners = []
    for _, module in model.named_modules():
        for attr, names in GROUPS.items():
            if attr in module.__dict__ and all(isinstance(module.get(n), nn.Module) for n in names):
                setattr(module, attr, ProjectionGroup.build(module, names))
                owners.append((module, attr))
    model.__dict__["_lazarus_fused_owners"] = owners
    return sum(getattr(m, a) is not None for m, a in owners)


def refresh_fused(model) -> tuple[bool, ...]:
    """Before generating: re-fuse every group whose layers or weight values changed since
    (trained, reloaded, quantized), so that decoding runs fused; returns which groups are live. A
    rebuilt group drops the model's cached compiled decode steps (they hold the old fused weights).
    Costs one comparison of the fused weights when a training step handed back new arrays."""
    live = []
    for owner, attr in _owners(model):
        group = getattr(owner, attr)
        if group is None or not group.refresh(owner):
            old, group = group, ProjectionGroup.build(owner, GROUPS[attr])
            setattr(owner, attr, group)
            if old is not None or group is not None:
                model.__dict__.pop("_lazarus_decode_steps", None)
        live.append(group is not None)
    return tuple(live)


class trusted_groups:
    """Within the block the groups skip their weight check: a compiled step traced here sees
    traced copies of the weights that :func:`refresh_fused` has just checked."""

    def __enter__(self):
        global _trusted
        _trusted += 1

    def __exit__(self, *exc):
        global _trusted
        _trusted -= 1
