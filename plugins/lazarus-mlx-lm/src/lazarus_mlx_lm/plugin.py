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
        description="any architecture mlx-lm supports (fallback for model types no other family knows); "
                    "hook points: hook_embed, blocks.L.hook_resid_pre/post, ln_final.hook_normalized; "
                    "not fired: hook_attn_out, hook_mlp_out, hook_resid_mid, attn.hook_pattern, attn.hook_z, "
                    "mlp.hook_post (probes that need them cannot run on a bridged model)",
    ))
