"""Fused projections: checkpoints that store several linear layers as one (Phi-3's ``qkv_proj`` and
``gate_up_proj``) load into the separate layers every family has, and are written back fused.

A family describes its fused layers as ``{fused suffix: ((part suffix, rows), ...)}``, e.g.
``{"self_attn.qkv_proj": (("self_attn.q_proj", 3072), ("self_attn.k_proj", 1024), ...)}``. The
parts are stacked along the output axis (rows of the (out, in) weight), so quantized tensors
(``weight``, ``scales``, ``biases``: groups run along the input axis) split and join the same way.
"""

from __future__ import annotations

import mlx.core as mx

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
    out, pending = {}, {}
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
