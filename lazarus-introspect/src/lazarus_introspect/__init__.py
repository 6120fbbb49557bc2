"""lazarus-introspect: look inside Lazarus models (logit lens, tuned lens, probes, patching, ablation,
steering, attention, neurons, embeddings, direct logit attribution, attribution patching, sparse
autoencoders).

Every probe is a plugin (``lazarus introspect NAME``) and a Python function. The Python API is
imported lazily, so ``import lazarus_introspect`` (and ``lazarus --help``) does not import mlx::

    import lazarus
    from lazarus_introspect import logit_lens, residual_stream

    model, tokenizer, _ = lazarus.load_model("path/to/model", adapter_path=None)
    result = logit_lens(model, tokenizer, "The capital of France is", track=" Paris")

See docs/introspect.md for each probe and :mod:`lazarus_introspect.activations` for the hook layer.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # hook layer
    "hook_name": "activations", "run_with_cache": "activations", "run_with_hooks": "activations",
    "attached": "activations", "lens": "activations", "residual_stream": "activations",
    "prompt_representations": "activations",
    # probes
    "logit_lens": "logit_lens", "layer_logits": "logit_lens", "read_layers": "logit_lens",
    "train_translators": "tuned_lens", "save_translators": "tuned_lens", "load_translators": "tuned_lens",
    "translator_transform": "tuned_lens",
    "probe_layers": "linear_probe", "fit_logistic": "linear_probe", "load_direction": "linear_probe",
    "patch_scan": "patching", "run_patched": "patching",
    "Ablation": "ablation", "ablation_hook": "ablation", "ablation_effects": "ablation",
    "steer": "steering", "steering_hooks": "steering", "mean_difference_direction": "steering",
    "attention_patterns": "attention",
    "top_neurons": "neurons",
    "layer_geometry": "embeddings",
    "direct_logit_attribution": "dla", "attribution_patching": "attribution",
    "SAE": "sae", "load_sae": "sae", "save_sae": "sae", "train_sae": "sae_train", "SAETrainConfig": "sae_train",
    # reports
    "Report": "report", "write_json": "report",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"lazarus_introspect.{_API[name]}"), name)
    raise AttributeError(f"module 'lazarus_introspect' has no attribute {name!r}")


__all__ = ["__version__", *_API]
