"""The core's own plugin: built-in adapters and checkpoint formats register here through the same
hooks as any third-party plugin. Listed by ``lazarus plugins list --all`` as ``lazarus-core``."""

from __future__ import annotations

import lazarus
from lazarus.specs import AdapterSpec, CheckpointFormatSpec


@lazarus.hookimpl
def register_adapters(register):
    register(AdapterSpec(name="lora", entry="lazarus.adapters.lora:LORA",
                         description="LoRA: W x + scale * (x @ lora_a) @ lora_b on chosen linear layers"))
    register(AdapterSpec(name="dora", entry="lazarus.adapters.dora:DORA",
                         description="DoRA: LoRA with rows renormalised to a learned magnitude m"))
    register(AdapterSpec(name="full", entry="lazarus.adapters.full:FULL",
                         description="full fine-tuning of the last N blocks' own weights"))


@lazarus.hookimpl
def register_checkpoint_formats(register):
    register(CheckpointFormatSpec(
        name="mlx-lm", entry="lazarus.checkpoints.adapter_dir:MLX_LM",
        description="mlx-lm adapter directory: adapter_config.json + adapters.safetensors"))
    register(CheckpointFormatSpec(
        name="hf", entry="lazarus.checkpoints.hf:HF",
        description="whole model in Hugging Face layout: config.json, (sharded) safetensors, tokenizer"))
    register(CheckpointFormatSpec(
        name="npz-legacy", entry="lazarus.checkpoints.npz_legacy:NPZ_LEGACY", can_write=False,
        description="read-only: old .npz LoRA adapters, keys renamed to today's (no pickle)"))
    register(CheckpointFormatSpec(
        name="gguf", entry="lazarus.checkpoints.gguf:GGUF", can_read=False,
        description="write-only: a whole model as one llama.cpp GGUF file (lazarus export gguf)"))
