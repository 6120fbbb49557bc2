"""Rotary position embeddings from either Hugging Face config layout.

transformers 4 writes ``rope_theta`` at the top level and an optional ``rope_scaling`` dict
(``{"type"|"rope_type": "linear"|"llama3", "factor": ...}``); transformers 5 writes one
``rope_parameters`` dict that holds ``rope_theta`` and ``rope_type`` together. Both become
``(theta, scaling)`` here, and :class:`RoPE` applies the rotation in the "rotate half" layout HF uses.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from lazarus.errors import LazarusError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_from_hf_config(config: dict, default_theta: float = 10000.0) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling)`` from an HF config dict in the transformers-4 or -5 layout.

    ``rope_scaling`` is None for plain RoPE, else a dict with ``rope_type`` and its parameters.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params:
        if "rope_theta" not in params and all(isinstance(v, dict) for v in params.values()):
            raise LazarusError(
                "config.json rope_parameters is given per layer type "
                f"({', '.join(params)}); none of the installed families uses that layout"
            )
        theta = float(params.get("rope_theta", config.get("rope_theta", default_theta)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(config.get("rope_theta", default_theta))
        scaling = dict(config.get("rope_scaling") or {})
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise LazarusError(
            f"unsupported rope_type {rope_type!r} in config.json (rope_scaling / rope_parameters); "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None
    if "factor" not in scaling:
        raise LazarusError(f"config.json rope_scaling of type {rope_type!r} has no 'factor'")
    return theta, {"rope_type": rope_type, **scaling}


def llama3_inverse_frequencies(dims: int, theta: float, scaling: dict) -> np.ndarray:
    """Llama 3.1's inverse frequencies: long wavelengths slowed by ``factor``, a smooth band between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = old_context / low_freq_factor
    high_freq_wavelength = old_context / high_freq_factor
    scaled = np.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return np.where(medium, smoothed, scaled)


class RoPE:
    """Rotates the first ``dims`` features of ``(B, H, T, D)`` queries/keys by their positions.

    Not an ``nn.Module``: it has no weights, so it stays out of the parameter tree. One instance
    is shared by all layers of a model. ``offset`` is the position of the first of the T tokens.
    """

    def __init__(self, dims: int, theta: float = 10000.0, scaling: dict | None = None):
        self.dims = dims
        self.theta = theta
        self.scaling = scaling
        self.position_scale = 1.0
        self._periods = None  # 1 / inverse frequency, as mx.fast.rope's ``freqs`` wants
        rope_type = scaling["rope_type"] if scaling else "default"
        if scaling and rope_type == "linear":
            self.position_scale = 1.0 / float(scaling["factor"])
        elif scaling and rope_type == "llama3":
            inv_freq = llama3_inverse_frequencies(dims, theta, scaling)
            self._periods = mx.array(1.0 / inv_freq, dtype=mx.float32)

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        if self._periods is None:
            return mx.fast.rope(x, self.dims, traditional=False, base=self.theta,
                                scale=self.position_scale, offset=offset)
        return mx.fast.rope(x, self.dims, traditional=False, base=None, scale=self.position_scale,
                            offset=offset, freqs=self._periods)

    def __repr__(self) -> str:
        kind = self.scaling["rope_type"] if self.scaling else "default"
        return f"RoPE(dims={self.dims}, theta={self.theta:g}, type={kind})"
