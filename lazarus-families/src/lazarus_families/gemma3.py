"""Gemma 3 (text): Gemma 2's sandwich norms, scaled embeddings and GELU-tanh, plus

- an RMSNorm (``1 + w``) over each head's queries and keys (``self_attn.q_norm`` / ``k_norm``),
- sliding-window and full layers from ``layer_types``, or from ``sliding_window_pattern`` (every
  N-th layer full, the others sliding) in configs that predate ``layer_types``,
- a local RoPE base for sliding layers (``rope_local_base_freq``, no scaling) while full layers use
  ``rope_theta`` and ``rope_scaling``; transformers 5 writes both as ``rope_parameters`` per layer
  type, which is read too,
- no soft-capping unless the config sets it.
"""

from __future__ import annotations

import attrs

from lazarus.errors import LazarusError
from lazarus.models.transformer import CausalLM
from lazarus_families.gemma2 import ModelArgs as Gemma2Args


@attrs.define(kw_only=True)
class ModelArgs(Gemma2Args):
    model_type: str = "gemma3_text"
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window_pattern: int = 6
    rope_theta: float = 1000000.0
    rope_local_base_freq: float = 10000.0

    @classmethod
    def from_hf_config(cls, config: dict) -> ModelArgs:
        params = config.get("rope_parameters")
        if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
            # transformers 5: {"full_attention": {...}, "sliding_attention": {...}}
            if "full_attention" not in params:
                raise LazarusError("config.json rope_parameters has no 'full_attention' entry")
            config = dict(config)
            config["rope_parameters"] = params["full_attention"]
            local = params.get("sliding_attention") or {}
            if local.get("rope_type", "default") != "default":
                raise LazarusError("config.json rope_parameters.sliding_attention: only the default "
                                   f"rope_type is supported for sliding layers, got {local['rope_type']!r}")
            if "rope_theta" in local:
                config["rope_local_base_freq"] = local["rope_theta"]
        return super().from_hf_config(config)

    def default_layer_types(self) -> list[str]:
        """HF's rule for configs without layer_types: every ``sliding_window_pattern``-th layer is full."""
        pattern = self.sliding_window_pattern
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(self.num_hidden_layers)]

    @property
    def qk_norm(self) -> bool:
        return True

    def rope_for_layer(self, layer: int) -> tuple[float, dict | None]:
        assert self.layer_types is not None  # (Gemma 2's args fill it in)
        if self.layer_types[layer] == "sliding_attention":
            return float(self.rope_local_base_freq), None
        return self.rope_theta, self.rope_scaling


class Model(CausalLM):
    family = "gemma3"


def tiny_config(vocab_size: int = 512) -> dict:
    """A 2-layer Gemma 3 text config: layer 0 slides over 8 tokens with the local RoPE base, layer 1
    is full attention with linear RoPE scaling (as the 4B+ models), query_pre_attn_scalar != head_dim."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "query_pre_attn_scalar": 24,
        "sliding_window": 8,
        "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
    }
