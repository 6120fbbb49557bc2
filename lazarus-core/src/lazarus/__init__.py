"""Lazarus: load, fine-tune, generate with and look inside language models on MLX.

The core is small: hook specs (:mod:`lazarus.hookspecs`), specs (:mod:`lazarus.specs`), the plugin
registry (:mod:`lazarus.plugins`) and the CLI. Importing ``lazarus`` does not import mlx; the
model API below is imported on first use.
"""

from __future__ import annotations

import importlib

from pluggy import HookimplMarker

from lazarus import cpu_blas

# before anything imports mlx: bind MLX's CPU matmuls to OpenBLAS on Linux (see lazarus.cpu_blas)
cpu_blas.preload()

__version__ = "0.1.0"

hookimpl = HookimplMarker("lazarus")

# public name -> module that defines it; imported lazily so `import lazarus` stays light
_LAZY = {
    "load_model": "lazarus.loader",
    "generate": "lazarus.generation",
    "stream_generate": "lazarus.generation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lazarus' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", *_LAZY]
