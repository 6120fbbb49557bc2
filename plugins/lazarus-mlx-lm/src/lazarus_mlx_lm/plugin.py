"""Registers the ``mlx-lm`` family for every ``model_type`` (``"*"``): the loader uses it only for
checkpoints no other installed family claims, so first-party families always win. Importing this
module imports neither mlx nor mlx-lm."""

from __future__ import annotations

import lazarus
from lazarus.specs import FamilySpec


@lazarus.hookimpl
def register_families(register):
    register(FamilySpec(
        name="mlx-lm", model_types=("*",), entry="lazarus_mlx_lm.bridge",
        description="any architecture mlx-lm supports (fallback for model types no other family knows)",
    ))
