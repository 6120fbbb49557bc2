"""Quantized weights in mlx-lm's layout, for loading and for ``lazarus quantize``.

``config.json`` carries ``"quantization": {"group_size": 64, "bits": 4, "mode": "affine"}`` (mlx-lm
also writes the same dict as ``quantization_config``), optionally with per-layer entries keyed by
module path: a dict overriding ``bits`` / ``group_size`` / ``mode`` for that layer, or ``false`` to
keep it in full precision. A quantized layer stores ``weight`` (packed uint32), ``scales`` and,
in affine mode, ``biases``; layers without ``scales`` in the checkpoint stay plain.
"""

from __future__ import annotations

from pathlib import Path

from lazarus.errors import LazarusError

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")


def quantization_from_config(config: dict, config_path: Path | str = "config.json") -> dict | None:
    """The mlx-lm ``quantization`` dict of a config (None for a full-precision checkpoint).

    Other tools' quantizations (GPTQ, AWQ, bitsandbytes ... in ``quantization_config`` with a
    ``quant_method``) raise a LazarusError naming the method.
    """
    quant = config.get("quantization")
    if quant is None:
        other = config.get("quantization_config")
        if not other:
            return None
        if not isinstance(other, dict) or "quant_method" in other or "bits" not in other:
            method = other.get("quant_method", "?") if isinstance(other, dict) else "?"
            raise LazarusError(f"{config_path}: quantization_config uses quant_method {method!r}, which "
                               "Lazarus cannot load; use the full-precision checkpoint (and `lazarus "
                               "quantize` it) or an mlx-community quantized one")
        quant = other
    if not isinstance(quant, dict):
        raise LazarusError(f"{config_path}: quantization must be an object like "
                           '{"group_size": 64, "bits": 4}')
    check_settings(quant, f"{config_path}: quantization")
    for key, value in quant.items():
        if isinstance(value, dict):
            check_settings({**_defaults(quant), **value}, f"{config_path}: quantization[{key!r}]")
    return quant


def check_settings(settings: dict, where: str) -> None:
    bits, group_size, mode = settings.get("bits"), settings.get("group_size"), settings.get("mode", "affine")
    if bits not in BITS:
        raise LazarusError(f"{where}: bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if group_size not in GROUP_SIZES:
        raise LazarusError(f"{where}: group_size must be one of {', '.join(map(str, GROUP_SIZES))}, "
                           f"got {group_size!r}")
    if mode not in MODES:
        raise LazarusError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")


def _defaults(quant: dict) -> dict:
    return {"group_size": quant["group_size"], "bits": quant["bits"], "mode": quant.get("mode", "affine")}


def apply_quantization(model, quant: dict, weights: dict, fused_parts: dict[str, str] | None = None) -> None:
    """Turn the layers of ``model`` that the checkpoint stores quantized into quantized layers.

    A layer is quantized when ``weights`` holds ``{path}.scales``; its settings are the per-layer
    entry of ``quant`` (also looked up under the fused layer a part was split from, through
    ``fused_parts``: part suffix -> fused suffix) or the defaults.
    """
    import mlx.nn as nn

    defaults = _defaults(quant)
    fused_parts = fused_parts or {}

    def settings(path: str, module) -> dict | bool:
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
            return False
        entry = quant.get(path)
        if entry is None:
            for part, fused in fused_parts.items():
                if path.endswith("." + part):
                    entry = quant.get(path[: -len(part)] + fused)
                    break
        if entry is False:
            return False
        return {**defaults, **entry} if isinstance(entry, dict) else defaults

    nn.quantize(model, class_predicate=settings)


def quantize_model(model, bits: int = 4, group_size: int = 64, mode: str = "affine") -> dict:
    """Quantize every linear and embedding layer of ``model`` in place whose input size is a
    multiple of ``group_size``; returns the ``quantization`` dict to write into config.json."""
    import mlx.nn as nn

    settings = {"group_size": group_size, "bits": bits, "mode": mode}
    check_settings(settings, "quantize")

    def predicate(path: str, module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, mode=mode, class_predicate=predicate)
    return settings
