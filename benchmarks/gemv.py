"""Batch-1 matrix-vector products: a custom CUDA kernel (``mx.fast.cuda_kernel``) vs MLX's matmul.

Shapes of the 1.04B llama's decode step (fused q/k/v and gate/up), bfloat16 and 4-bit. For each:
the largest difference from MLX's result, and the time of a chain of the step's products (16 layers
x 4 products + the head) in one graph, best and median of --repeats, with the bandwidth reached.
Needs a CUDA GPU (MLX's CUDA backend). The kernel: one warp per output row (several for long
rows), 16-byte loads, float32 accumulation, a warp-shuffle reduction; the same for MLX's affine
4-bit layout. It lost to MLX's own kernels on the H200 (docs/performance.md), so it stays here as
the measurement behind that statement, not in the library; the `tiny kernels` line is the
per-kernel floor that bounds batch-1 decode.

    python benchmarks/gemv.py --json gemv.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import mlx.core as mx

_HEADER = "#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n"

# the end of both kernels: a warp's sum, then the row's (its S warps' sums) written out
_REDUCE = r"""
  #pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
  if (S == 1) {
    if (lane == 0 && row < N) y[row] = static_cast<T>(acc);
  } else {
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (part == 0 && lane == 0 && row < N) {
      float total = 0.f;
      for (int p = 0; p < S; ++p) total += partial[warp + p];
      y[row] = static_cast<T>(total);
    }
  }
"""

# T: the weight/activation type (__nv_bfloat16 or __half); K: the input size; S: warps per row.
_DENSE = r"""
  constexpr int ROWS = 8 / S;                      // 256 threads: 8 warps
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * ROWS + warp / S, part = warp % S;
  __shared__ float partial[8];
  float acc = 0.f;
  if (row < N) {
    const uint4* wr = reinterpret_cast<const uint4*>(w) + (size_t)row * (K / 8);
    const uint4* xr = reinterpret_cast<const uint4*>(x);
    #pragma unroll 8
    for (int i = part * 32 + lane; i < K / 8; i += 32 * S) {
      uint4 a = wr[i];
      uint4 b = xr[i];
      const T* ap = reinterpret_cast<const T*>(&a);
      const T* bp = reinterpret_cast<const T*>(&b);
      #pragma unroll
      for (int j = 0; j < 8; ++j) acc = fmaf(static_cast<float>(ap[j]), static_cast<float>(bp[j]), acc);
    }
  }
"""

# 4-bit affine: weight (N, K/8) uint32, scales/biases (N, K/G) of T; value = scale * q + bias.
# A lane reads 16 bytes (32 values, inside one group when G >= 32) per step.
_QUANT4 = r"""
  constexpr int ROWS = 8 / S;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * ROWS + warp / S, part = warp % S;
  __shared__ float partial[8];
  float acc = 0.f;
  if (row < N) {
    const uint4* wr = reinterpret_cast<const uint4*>(w) + (size_t)row * (K / 32);
    const T* sr = scales + (size_t)row * (K / G);
    const T* br = biases + (size_t)row * (K / G);
    #pragma unroll 4
    for (int i = part * 32 + lane; i < K / 32; i += 32 * S) {
      uint4 q = wr[i];
      const uint4* xr = reinterpret_cast<const uint4*>(x + i * 32);
      const unsigned int* qp = reinterpret_cast<const unsigned int*>(&q);
      float dot = 0.f, sum = 0.f;
      #pragma unroll
      for (int c = 0; c < 4; ++c) {
        uint4 xv = xr[c];
        const T* xp = reinterpret_cast<const T*>(&xv);
        unsigned int bits = qp[c];
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
          float xf = static_cast<float>(xp[j]);
          dot = fmaf(static_cast<float>((bits >> (4 * j)) & 0xF), xf, dot);
          sum += xf;
        }
      }
      const int g = (i * 32) / G;
      acc += static_cast<float>(sr[g]) * dot + static_cast<float>(br[g]) * sum;
    }
  }
"""


@functools.cache
def _kernels():
    dense = mx.fast.cuda_kernel(name="lazarus_gemv", input_names=["x", "w"], output_names=["y"],
                                source=_DENSE + _REDUCE, header=_HEADER)
    quant = mx.fast.cuda_kernel(name="lazarus_qgemv4", input_names=["x", "w", "scales", "biases"],
                                output_names=["y"], source=_QUANT4 + _REDUCE, header=_HEADER)
    return dense, quant


def _warps_per_row(rows: int, k_vectors: int) -> int:
    """Split a row over several warps when there are few rows and each is long."""
    s = 1
    while s < 8 and rows * s < 4096 and k_vectors // (s * 2) >= 32:
        s *= 2
    return s


def gemv(x: mx.array, weight: mx.array) -> mx.array:
    """``x @ weight.T`` for one row ``x`` (``(..., K)`` with one row) and ``weight`` ``(N, K)``."""
    rows, k = weight.shape
    s = _warps_per_row(rows, k // 8)
    out = _kernels()[0](inputs=[x.reshape(-1), weight], template=[("T", x.dtype), ("K", k), ("N", rows), ("S", s)],
                        grid=((rows + 8 // s - 1) // (8 // s) * 256, 1, 1), threadgroup=(256, 1, 1),
                        output_shapes=[(rows,)], output_dtypes=[x.dtype])[0]
    return out.reshape(*x.shape[:-1], rows)


def quantized_gemv(x: mx.array, weight: mx.array, scales: mx.array, biases: mx.array,
                   group_size: int = 64) -> mx.array:
    """``quantized_matmul(x, weight, scales, biases, transpose=True)`` (4 bits) for one row ``x``."""
    rows = weight.shape[0]
    k = x.shape[-1]
    s = _warps_per_row(rows, k // 32)
    out = _kernels()[1](inputs=[x.reshape(-1), weight, scales.astype(x.dtype), biases.astype(x.dtype)],
                        template=[("T", x.dtype), ("K", k), ("N", rows), ("S", s), ("G", group_size)],
                        grid=((rows + 8 // s - 1) // (8 // s) * 256, 1, 1), threadgroup=(256, 1, 1),
                        output_shapes=[(rows,)], output_dtypes=[x.dtype])[0]
    return out.reshape(*x.shape[:-1], rows)



SHAPES = {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)}
HEAD = (32000, 2048)


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        mx.synchronize()
        start = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--chains", type=int, default=8, help="decode steps per timed graph")
    ap.add_argument("--json")
    args = ap.parse_args()
    mx.random.seed(0)
    dtype = mx.bfloat16
    layers = [{name: (mx.random.normal(shape) * 0.02).astype(dtype) for name, shape in SHAPES.items()}
              for _ in range(args.layers)]
    head = (mx.random.normal(HEAD) * 0.02).astype(dtype)
    quant = [{name: mx.quantize(w, group_size=64, bits=4) for name, w in layer.items()} for layer in layers]
    qhead = mx.quantize(head, group_size=64, bits=4)
    mx.eval(layers, head, quant, qhead)
    dense_bytes = sum(w.nbytes for layer in layers for w in layer.values()) + head.nbytes
    quant_bytes = sum(sum(a.nbytes for a in q) for layer in quant for q in layer.values()) + sum(a.nbytes for a in qhead)
    out: dict = {"mlx": mx.__version__, "device": str(mx.default_device()), "layers": args.layers,
                 "bytes": {"bf16": dense_bytes, "q4": quant_bytes}, "errors": {}, "timings": {}}

    # correctness, shape by shape (relative to the largest |value| of MLX's result)
    for name, (n, k) in {**SHAPES, "head": HEAD}.items():
        x = (mx.random.normal((1, 1, k))).astype(dtype)
        w = layers[0][name] if name != "head" else head
        q = quant[0][name] if name != "head" else qhead
        ref = (x @ w.T).astype(mx.float32)
        got = gemv(x, w).astype(mx.float32)
        qref = mx.quantized_matmul(x, q[0], q[1], q[2], transpose=True, group_size=64, bits=4).astype(mx.float32)
        qgot = quantized_gemv(x, q[0], q[1], q[2], group_size=64).astype(mx.float32)
        scale, qscale = float(mx.abs(ref).max()), float(mx.abs(qref).max())
        out["errors"][name] = {"bf16": float(mx.abs(got - ref).max()) / scale,
                               "q4": float(mx.abs(qgot - qref).max()) / qscale}
        print(f"{name:8s} ({n}x{k}) relative max |diff|: bf16 {out['errors'][name]['bf16']:.2e}, "
              f"q4 {out['errors'][name]['q4']:.2e}", flush=True)

    def dense_step(x, mm):
        for layer in layers:
            a = mm(x, layer["qkv"])[..., :2048]
            x = x + mm(a, layer["o"])
            g = mm(x, layer["gate_up"])
            x = x + mm(g[..., :8192] * g[..., 8192:], layer["down"])
        return mm(x, head)

    def quant_step(x, mm):
        for layer in quant:
            a = mm(x, *layer["qkv"])[..., :2048]
            x = x + mm(a, *layer["o"])
            g = mm(x, *layer["gate_up"])
            x = x + mm(g[..., :8192] * g[..., 8192:], *layer["down"])
        return mm(x, *qhead)

    engines = {
        "bf16 mlx": (dense_step, lambda x, w: x @ w.T, dense_bytes),
        "bf16 kernel": (dense_step, gemv, dense_bytes),
        "q4 mlx": (quant_step, lambda x, w, s, b: mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64,
                                                                       bits=4), quant_bytes),
        "q4 kernel": (quant_step, lambda x, w, s, b: quantized_gemv(x, w, s, b, group_size=64), quant_bytes),
    }
    x0 = (mx.random.normal((1, 1, 2048)) * 0.1).astype(dtype)

    def chain(step, mm):
        y = x0
        for _ in range(args.chains):
            y = step(x0 + 0 * y[..., :1].astype(dtype), mm)  # one step after the other, as in decoding
        return y

    for step, mm, _ in engines.values():  # warm-up (kernel compilation)
        mx.eval(chain(step, mm))
    runs: dict = {name: [] for name in engines}
    for _ in range(args.repeats):  # engines alternate
        for name, (step, mm, _) in engines.items():
            runs[name] += _timed(lambda step=step, mm=mm: chain(step, mm), 1)
    for name, (_, _, nbytes) in engines.items():
        per_step = [t / args.chains for t in runs[name]]
        best, median = min(per_step), statistics.median(per_step)
        out["timings"][name] = {"ms_best": best * 1e3, "ms_median": median * 1e3,
                                "tb_s_best": nbytes / best / 1e12, "tb_s_median": nbytes / median / 1e12}
        print(f"{name:13s}: {best * 1e3:.3f} ms ({median * 1e3:.3f}) per decode step's products; "
              f"{nbytes / best / 1e12:.2f} TB/s best", flush=True)
    # the floor: the same number of kernels, each on a tiny array (one launch each, no bandwidth)
    tiny = mx.zeros((1, 1, 8), dtype=dtype)
    launches = 4 * args.layers + 1

    def empty_chain():
        y = tiny
        for _ in range(args.chains * launches):
            y = y * 1.0001 + 1  # one fused-free elementwise kernel each (two ops, one graph node each)
        return y

    mx.eval(empty_chain())
    floor = [t / args.chains for t in _timed(empty_chain, args.repeats)]
    out["timings"]["tiny kernels"] = {"ms_best": min(floor) * 1e3, "ms_median": statistics.median(floor) * 1e3,
                                      "kernels_per_step": 2 * launches}
    print(f"{2 * launches} tiny kernels: {min(floor) * 1e3:.3f} ms ({statistics.median(floor) * 1e3:.3f}) per step: "
          f"{min(floor) / (2 * launches) * 1e6:.1f} us per kernel", flush=True)
    for kind in ("bf16", "q4"):
        t = out["timings"]
        out[f"{kind}_speedup"] = {"best": t[f"{kind} mlx"]["ms_best"] / t[f"{kind} kernel"]["ms_best"],
                                  "median": t[f"{kind} mlx"]["ms_median"] / t[f"{kind} kernel"]["ms_median"]}
        print(f"{kind}: custom kernel {out[f'{kind}_speedup']['best']:.2f}x best, "
              f"{out[f'{kind}_speedup']['median']:.2f}x median", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
