"""Registers the model families of this distribution (one module per family, imported on use)."""

from __future__ import annotations

import lazarus
from lazarus.specs import FamilySpec

FAMILIES = (
    ("llama", ("llama",), ("LlamaForCausalLM",), "Llama 1-3 (GQA, llama3 RoPE scaling)"),
    ("mistral", ("mistral",), ("MistralForCausalLM",), "Mistral (sliding-window attention)"),
    ("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), "Qwen2 / Qwen2.5 (q/k/v biases)"),
    ("gemma", ("gemma",), ("GemmaForCausalLM",), "Gemma (1+w RMSNorm, scaled embeddings, GELU-tanh)"),
    ("gemma2", ("gemma2",), ("Gemma2ForCausalLM",),
     "Gemma 2 (soft-capping, alternating sliding window, sandwich norms)"),
    ("granite", ("granite",), ("GraniteForCausalLM",), "IBM Granite 3 (embedding/residual/attention/logit multipliers)"),
    ("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), "Qwen3 dense (q/k RMSNorm per head, explicit head_dim)"),
    ("gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",),
     "Gemma 3 text (per-layer sliding/full attention, local RoPE base, q/k norms)"),
    ("phi3", ("phi3",), ("Phi3ForCausalLM",), "Phi-3 / Phi-4 (fused qkv/gate_up split on load, partial RoPE)"),
    ("starcoder2", ("starcoder2",), ("Starcoder2ForCausalLM",),
     "StarCoder2 (LayerNorm with bias, non-gated GELU MLP, biases)"),
)


@lazarus.hookimpl
def register_families(register):
    for name, model_types, architectures, description in FAMILIES:
        register(FamilySpec(name=name, model_types=model_types, architectures=architectures,
                            entry=f"lazarus_families.{name}", description=description))
