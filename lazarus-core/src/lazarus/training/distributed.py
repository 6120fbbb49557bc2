"""Data parallelism over ``mlx.distributed``.

A run started with ``mlx.launch -n N -- lazarus train ...`` gets N ranks: each takes its share of
every batch (the data layer shards by rank), gradients and loss counts are summed over ranks, and
only rank 0 writes files and draws progress. A plain single-process run is a world of size 1 and
pays nothing for any of this.
"""

from __future__ import annotations

import attrs


@attrs.define
class World:
    """This process's place in the data-parallel group."""

    group: object = None
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the one rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, tree):
        """Sum every array of ``tree`` over ranks (identity for a single process)."""
        if not self.distributed:
            return tree
        import mlx.core as mx
        from mlx.utils import tree_map

        return tree_map(lambda x: mx.distributed.all_sum(x, group=self.group, stream=mx.cpu), tree)

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's ``values`` (same length on each, each below 2**32), in rank order."""
        if not self.distributed:
            return [list(values)]
        import mlx.core as mx

        gathered = mx.distributed.all_gather(mx.array(values, dtype=mx.uint32), group=self.group,
                                             stream=mx.cpu)
        flat = [int(v) for v in gathered.tolist()]
        width = len(values)
        return [flat[i * width:(i + 1) * width] for i in range(self.size)]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (e.g. "stop now")."""
        if not self.distributed:
            return flag
        import mlx.core as mx

        total = mx.distributed.all_sum(mx.array(1 if flag else 0, dtype=mx.int32), group=self.group,
                                       stream=mx.cpu)
        return bool(total.item() > 0)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.any(False)


def init_world() -> World:
    """Join the distributed group set up by ``mlx.launch`` (a world of one when there is none)."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return World()
    group = mx.distributed.init()
    return World(group=group, rank=group.rank(), size=group.size())
