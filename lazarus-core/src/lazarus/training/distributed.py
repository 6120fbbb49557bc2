"""Data parallelism over ``mlx.distributed``.

A run started with ``mlx.launch -n N -- lazarus train ...`` gets N ranks: each takes its share of
every batch (the data layer shards by rank), gradients and loss counts are summed over ranks, and
only rank 0 writes files and draws progress. A plain single-process run is a world of size 1 and
pays nothing for any of this.

Collectives run on the stream their backend needs: NCCL (NVIDIA GPUs) reduces on the GPU's default
stream and has no CPU implementation, while ring, MPI and JACCL reduce on the CPU stream (passing
``stream=mx.cpu`` to an NCCL group fails with "There is no Stream(gpu, 1) in current thread").
Every collective of a run goes through :class:`World`, so that choice is made in one place.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from mlx.core.distributed import Group

#: the largest flat buffer :meth:`World.all_sum` sends at once (a full fine-tune's gradients go in
#: several, so no copy of all of them is ever made)
BUCKET_BYTES = 64 << 20

#: the backends ``mx.distributed`` can be built with, in the order ``lazarus doctor`` lists them
BACKENDS = ("ring", "mpi", "nccl", "jaccl")


@attrs.define
class World:
    """This process's place in the data-parallel group."""

    group: Group | None = None  #: mx.distributed's group (None: a single process)
    rank: int = 0
    size: int = 1
    backend: str = "none"  #: ring | mpi | nccl | jaccl (``none`` for a single process)

    @property
    def is_main(self) -> bool:
        """True on the one rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def stream(self):
        """The stream collectives run on: the default GPU stream for NCCL (None: the default device's
        default stream), the CPU stream for the CPU backends (ring, MPI, JACCL)."""
        import mlx.core as mx

        return None if self.backend == "nccl" else mx.cpu

    def all_sum(self, tree):
        """Sum every array of ``tree`` over ranks (identity for a single process).

        The arrays travel as one flat buffer per dtype, so a tree of gradients is one collective,
        not one per parameter: each collective has a fixed cost (on NCCL a launch and a
        rendezvous of the ranks), which for a LoRA model's many small arrays made two GPUs no
        faster than one. Element-wise sums, so the result is the same as array by array. (MLX's
        ``nn.average_gradients`` buckets the same way but divides by the group size, sends mixed
        dtypes array by array and rebuilds the tree without its empty containers or tuples; these
        trees hold counts and metrics beside gradients.)"""
        if not self.distributed:
            return tree
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_map

        if isinstance(tree, mx.array):
            return mx.distributed.all_sum(tree, group=self.group, stream=self.stream)
        flat_tree: list[tuple[str, Any]] = tree_flatten(tree)  # type: ignore[assignment]  # stubs: list | dict
        leaves = [leaf if isinstance(leaf, mx.array) else mx.array(leaf) for _, leaf in flat_tree]
        buckets: list[list[int]] = []  # leaf indices of one dtype, up to BUCKET_BYTES each
        open_bucket: dict = {}  # dtype -> (its bucket being filled, bytes in it)
        for index, leaf in enumerate(leaves):
            bucket, size = open_bucket.get(leaf.dtype, (None, 0))
            if bucket is None or size + leaf.nbytes > BUCKET_BYTES:
                bucket, size = [], 0
                buckets.append(bucket)
            bucket.append(index)
            open_bucket[leaf.dtype] = (bucket, size + leaf.nbytes)
        summed: list = [None] * len(leaves)
        for indices in buckets:
            parts = [leaves[i] for i in indices]
            flat = mx.concatenate([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0].reshape(-1)
            total = mx.distributed.all_sum(flat, group=self.group, stream=self.stream)
            start = 0
            for i, part in zip(indices, parts, strict=True):
                summed[i] = total[start:start + part.size].reshape(part.shape)
                start += part.size
        order = iter(summed)  # tree_map visits the leaves in tree_flatten's order
        return tree_map(lambda _: next(order), tree)

    def sum_floats(self, values: list[float]) -> list[float]:
        """``values`` summed element-wise over ranks (float32 on the wire), as Python floats."""
        if not self.distributed:
            return [float(v) for v in values]
        import mlx.core as mx

        return [float(v) for v in self.all_sum(mx.array(values, dtype=mx.float32)).tolist()]

    def all_gather(self, x):
        """Every rank's ``x`` (same shape on each) concatenated along the first axis, in rank order."""
        if not self.distributed:
            return x
        import mlx.core as mx

        return mx.distributed.all_gather(x, group=self.group, stream=self.stream)

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's ``values`` (same length on each, each below 2**32), in rank order."""
        if not self.distributed:
            return [list(values)]
        import mlx.core as mx

        # as 16-bit halves in int32, the integer type every backend reduces and gathers
        halves = [h for v in values for h in (int(v) & 0xFFFF, int(v) >> 16)]
        flat = [int(v) for v in self.all_gather(mx.array(halves, dtype=mx.int32)).tolist()]
        joined = [flat[i] | (flat[i + 1] << 16) for i in range(0, len(flat), 2)]
        width = len(values)
        return [joined[i * width:(i + 1) * width] for i in range(self.size)]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (e.g. "stop now")."""
        if not self.distributed:
            return flag
        import mlx.core as mx

        return bool(self.all_sum(mx.array(1 if flag else 0, dtype=mx.int32)).item() > 0)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.any(False)

    def describe(self) -> str:
        """``2 ranks (nccl)``, for the run's first line."""
        return f"{self.size} ranks ({self.backend})"


def launched_backend(environ=None) -> str:
    """The backend ``mlx.launch`` set this process up for, read from the variables it exports
    (``any`` when none is recognised: MLX then tries each)."""
    env = os.environ if environ is None else environ
    if env.get("NCCL_HOST_IP") and env.get("MLX_WORLD_SIZE"):
        return "nccl"
    if env.get("MLX_IBV_DEVICES") or env.get("MLX_JACCL_COORDINATOR"):
        return "jaccl"
    if env.get("MLX_HOSTFILE"):
        return "ring"
    if env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE") or env.get("MLX_MPI_LIBNAME"):
        return "mpi"
    return "any"


def available_backends() -> dict[str, bool]:
    """Which distributed backends this MLX build can start (``lazarus doctor`` reports them)."""
    import mlx.core as mx

    out = {}
    for name in BACKENDS:
        try:
            out[name] = bool(mx.distributed.is_available(name))
        except Exception:  # an older MLX without that backend name
            out[name] = False
    return out


def init_world() -> World:
    """Join the distributed group set up by ``mlx.launch`` (a world of one when there is none)."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return World()
    backend = launched_backend()
    if backend != "any" and not mx.distributed.is_available(backend):
        backend = "any"
    group = mx.distributed.init(backend=backend)
    if group.size() == 1:
        return World(group=group)
    if backend == "any":  # launched by other means: MLX picked one; NCCL is the one that needs the GPU
        backend = "nccl" if mx.distributed.is_available("nccl") and os.environ.get("NCCL_HOST_IP") else "ring"
    return World(group=group, rank=group.rank(), size=group.size(), backend=backend)
