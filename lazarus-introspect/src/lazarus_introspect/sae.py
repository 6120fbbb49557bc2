"""Sparse autoencoders in SAELens's on-disk format: load, save, encode, decode, read features, steer.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` with ``W_enc`` (d_in, d_sae), ``W_dec``
(d_sae, d_in), ``b_enc`` (d_sae,), ``b_dec`` (d_in,) and, for JumpReLU, ``threshold`` (d_sae,).
``cfg.json`` names the ``architecture`` (``standard``, ``topk`` with ``k``, ``jumprelu``) and the
``hook_name`` in TransformerLens naming (Lazarus's hook names), at the top level (SAELens 5) or
under ``metadata`` / ``meta`` (SAELens 6). New configs are written in the flat SAELens 5 layout,
which SAELens 6 converts when it loads them; a loaded config keeps its own keys, with the flat
ones added, so each SAELens version finds what it wrote::

    pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    standard: f = relu(pre)          topk: the k largest of pre, relu'd, others 0
    jumprelu: f = relu(pre) * (pre > threshold)
    decode:   x_hat = f @ W_dec + b_dec

Commands: ``lazarus sae features`` (top features per token, and their top contexts in a dataset),
``lazarus sae steer`` / ``lazarus sae ablate`` (add a feature's decoder direction, or remove the
feature, at its hook during generation, through the model's hooks like ``introspect steer``) are in
:mod:`lazarus_introspect.sae_commands`; ``lazarus sae train`` in :mod:`lazarus_introspect.sae_train`.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import mlx.core as mx
import mlx.nn as nn

from lazarus.errors import LazarusError
from lazarus_introspect.cli_common import encode, token_strings

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu")
#: the files an SAE folder owns (others in the folder, like checkpoints/, are kept on save)
SAE_FILES = (CFG_FILE, WEIGHTS_FILE, "lazarus.json")


class SAE(nn.Module):
    """A sparse autoencoder: ``encode(x)`` (..., d_in) -> (..., d_sae), ``decode(f)`` back, ``hook``, ``cfg``.

    ``cfg`` is the ``cfg.json`` dict (SAELens keys); the weights are parameters, so the module
    trains with mlx optimizers.
    """

    def __init__(self, W_enc, W_dec, b_enc, b_dec, cfg: dict, threshold=None):  # noqa: N803 - SAELens names
        super().__init__()
        self.W_enc, self.W_dec, self.b_enc, self.b_dec = W_enc, W_dec, b_enc, b_dec
        if threshold is not None:
            self.threshold = threshold
        self.__dict__["cfg"] = dict(cfg)  # a plain attribute, outside the parameter tree

    # -- what the config says ------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.cfg["architecture"]

    @property
    def hook(self) -> str:
        """The hook point the SAE reads (TransformerLens naming, e.g. ``blocks.3.hook_resid_post``)."""
        return cast(str, _hook_of(self.cfg))  # (load_sae and sae_config require one)

    @property
    def k(self) -> int | None:
        return _k_of(self.cfg)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    # -- the computation -----------------------------------------------------------------------
    def pre_activation(self, x):
        """``(x - b_dec) @ W_enc + b_enc`` (b_dec subtracted when ``apply_b_dec_to_input``)."""
        x = x.astype(self.W_enc.dtype)
        if self.cfg.get("apply_b_dec_to_input", True):
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre):
        """The architecture's activation of pre-activations (..., d_sae)."""
        if self.architecture == "topk":
            k = min(self.k, pre.shape[-1])
            index = mx.stop_gradient(mx.argpartition(-pre, kth=k - 1, axis=-1)[..., :k])
            values = mx.maximum(mx.take_along_axis(pre, index, axis=-1), 0)
            return mx.put_along_axis(mx.zeros_like(pre), index, values, axis=-1)
        if self.architecture == "jumprelu":
            return mx.maximum(pre, 0) * (pre > self.threshold)
        return mx.maximum(pre, 0)

    def encode(self, x):
        """Feature activations (..., d_sae) of activations ``x`` (..., d_in)."""
        return self.activate(self.pre_activation(x))

    def decode(self, features):
        """Reconstructed activations (..., d_in): ``features @ W_dec + b_dec``."""
        return features @ self.W_dec + self.b_dec

    def __call__(self, x):
        return self.decode(self.encode(x))


def _hook_of(cfg: dict) -> str | None:
    return cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name") or (cfg.get("meta") or {}).get("hook_name")


def _k_of(cfg: dict) -> int | None:
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    return None if k is None else int(k)


def sae_config(*, architecture: str, d_in: int, d_sae: int, hook_name: str, k: int | None = None,
               model_name: str | None = None, **extra) -> dict:
    """A ``cfg.json`` dict in SAELens 5's flat layout (no ``sae_lens_version``, so SAELens 6 converts it)."""
    if architecture not in ARCHITECTURES:
        raise LazarusError(f"architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
    if architecture == "topk" and not k:
        raise LazarusError("a topk SAE needs k (the number of features active per token)")
    layer = _layer_of(hook_name)
    cfg = {
        "architecture": architecture, "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none",
        "activation_fn_str": "topk" if architecture == "topk" else "relu",
        "activation_fn_kwargs": {"k": int(k)} if architecture == "topk" and k else {},  # (topk has k: checked above)
        "model_name": model_name, "hook_name": hook_name, "hook_layer": layer, "hook_head_index": None,
        "prepend_bos": True, "context_size": None, "dataset_path": None, "finetuning_scaling_factor": False,
    }
    if architecture == "topk" and k:  # (topk has k: checked above)
        cfg["k"] = int(k)
    cfg.update(extra)
    return cfg


def _layer_of(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


# -- on disk --------------------------------------------------------------------------------------
def load_sae(path: str | Path) -> SAE:
    """Read an SAE folder in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``).

    Weights are read as float32. Errors name the file and key: a missing file, an unsupported
    architecture or activation normalisation, a missing or mis-shaped weight.
    """
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    for required in (cfg_path, weights_path):
        if not required.is_file():
            raise LazarusError(f"{required} not found; an SAE folder (SAELens layout) holds {CFG_FILE} and "
                               f"{WEIGHTS_FILE} (train one with `lazarus sae train`)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LazarusError(f"{cfg_path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise LazarusError(f"{cfg_path}: must hold a JSON object")
    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise LazarusError(f"{cfg_path}: architecture {architecture!r} is not supported; Lazarus reads "
                           f"{', '.join(ARCHITECTURES)}")
    cfg["architecture"] = architecture
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise LazarusError(f"{cfg_path}: normalize_activations {norm!r} is not supported; fold the scaling "
                           "into the weights in SAELens (sae.fold_activation_norm_scaling_factor) and save again")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise LazarusError(f"{cfg_path}: reshape_activations {cfg['reshape_activations']!r} (hook_z SAEs) "
                           "is not supported")
    if architecture == "topk" and not _k_of(cfg):
        raise LazarusError(f"{cfg_path}: a topk SAE needs 'k' (or activation_fn_kwargs.k)")
    hook = _hook_of(cfg)
    if not hook:
        raise LazarusError(f"{cfg_path}: no 'hook_name' (nor metadata.hook_name); it names the hook point "
                           "the SAE reads, e.g. blocks.3.hook_resid_post")
    try:
        weights = cast("dict[str, mx.array]", mx.load(str(weights_path)))  # (safetensors: a dict)
    except Exception as exc:  # mlx raises plain exceptions for corrupt files
        raise LazarusError(f"{weights_path}: cannot read safetensors ({exc})") from None
    if "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = mx.exp(weights["log_threshold"])
    needed = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if architecture == "jumprelu" else [])
    for key in needed:
        if key not in weights:
            raise LazarusError(f"{weights_path}: no {key!r}; a {architecture} SAE has {', '.join(needed)}")
    w = {k: weights[k].astype(mx.float32) for k in needed}
    d_in, d_sae = w["W_enc"].shape if w["W_enc"].ndim == 2 else (None, None)
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for key in needed:
        if d_in is None or tuple(w[key].shape) != shapes[key]:
            raise LazarusError(f"{weights_path}: {key} has shape {tuple(w[key].shape)}, expected {shapes[key]} "
                               "(W_enc is (d_in, d_sae))")
    for key, value in (("d_in", d_in), ("d_sae", d_sae)):
        if cfg.get(key) is not None and int(cfg[key]) != value:
            raise LazarusError(f"{cfg_path}: {key} is {cfg[key]} but the weights have {value}")
    cfg.update(d_in=d_in, d_sae=d_sae, hook_name=hook)
    if architecture == "topk":
        cfg["k"] = _k_of(cfg)
        cfg["activation_fn_kwargs"] = {**(cfg.get("activation_fn_kwargs") or {}), "k": cfg["k"]}
    return SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], cfg, w.get("threshold"))


def save_sae(sae: SAE, path: str | Path, provenance: dict | None = None) -> Path:
    """Write ``sae`` to the folder ``path`` in SAELens's layout (and ``lazarus.json`` when given).

    The folder is written whole to a temporary sibling and renamed into place; other files in an
    existing folder (a training run's checkpoints and metrics) are kept.
    """
    from lazarus.io import atomic_directory

    weights = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    if sae.architecture == "jumprelu":
        weights["threshold"] = sae.threshold
    weights = {k: v.astype(mx.float32) for k, v in weights.items()}
    mx.eval(weights)
    cfg = dict(sae.cfg, d_in=sae.d_in, d_sae=sae.d_sae, dtype="float32")
    with atomic_directory(path, owned=lambda name: name in SAE_FILES) as tmp:
        mx.save_safetensors(str(tmp / WEIGHTS_FILE), weights, metadata={"format": "pt"})
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if provenance is not None:
            (tmp / "lazarus.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    return Path(path)


# -- reading and changing features in a model -----------------------------------------------------
def check_fits(model, sae: SAE) -> None:
    """A LazarusError unless the model fires the SAE's hook (its width is checked on first use)."""
    if sae.hook not in set(model.hook_names()):
        raise LazarusError(f"the SAE reads {sae.hook!r}, which this {len(model.blocks)}-layer "
                           f"{getattr(model, 'family', '')} model does not fire; was it trained on another model?")


def feature_activations(model, sae: SAE, ids):
    """``(features (B, T, d_sae), activation (B, T, d_in))`` of ``ids`` at the SAE's hook."""
    from lazarus_introspect import activations

    check_fits(model, sae)
    _, cache = activations.run_with_cache(model, ids, [sae.hook])
    acts = cache[sae.hook]
    if acts.shape[-1] != sae.d_in:
        raise LazarusError(f"{sae.hook} has width {acts.shape[-1]} in this model but the SAE reads d_in = "
                           f"{sae.d_in}; use the SAE with the model it was trained on")
    return sae.encode(acts.astype(mx.float32)), acts


def reconstruction_stats(sae: SAE, x) -> dict:
    """``{"mse", "explained_variance", "l0"}`` of the SAE on activations ``x`` (N, d_in)."""
    x = x.astype(mx.float32)
    features = sae.encode(x)
    error = x - sae.decode(features)
    total = ((x - x.mean(axis=0)) ** 2).sum()
    return {"mse": float((error ** 2).sum(axis=-1).mean().item()),
            "explained_variance": float((1 - (error ** 2).sum() / total).item()),
            "l0": float((features > 0).sum(axis=-1).astype(mx.float32).mean().item())}


def feature_steering_hook(sae: SAE, feature: int, coefficient: float):
    """A hook adding ``coefficient`` x the feature's decoder direction (``W_dec[feature]``) at every position."""
    from lazarus_introspect.steering import steering_hook

    return steering_hook(sae.W_dec[feature], coefficient)


def feature_ablation_hook(sae: SAE, feature: int):
    """A hook removing the feature from the activation: ``x - f(x)[feature] * W_dec[feature]``."""
    def hook(activation, _name=None):
        amount = sae.encode(activation.astype(mx.float32))[..., feature:feature + 1]
        return (activation.astype(mx.float32) - amount * sae.W_dec[feature]).astype(activation.dtype)

    return hook


def top_contexts(model, tokenizer, sae: SAE, features: Sequence[int], texts, *, per_feature: int = 5,
                 width: int = 8, max_length: int = 256) -> dict:
    """For each of ``features``, the ``per_feature`` tokens in ``texts`` (an iterable of strings,
    read one at a time) where it fires most: ``{feature: [{"activation", "text", "token",
    "context"}]}``, ``context`` being up to ``width`` tokens before and the token itself, marked
    ``[[token]]``. A context that recurs (the same words in several records) is listed once."""
    heaps: dict[int, list] = {f: [] for f in features}
    kept = per_feature * 8  # room for repeats, dropped below
    index = mx.array(list(features), dtype=mx.int32)
    counter = 0
    for text in texts:
        ids = tokenizer.encode(text)[:max_length]
        if not ids:
            continue
        acts, _ = feature_activations(model, sae, mx.array([ids], dtype=mx.int32))
        chosen = acts[0][:, index].tolist()  # (T, F)
        for position, row in enumerate(chosen):
            for column, feature in enumerate(features):
                value = row[column]
                if value <= 0:
                    continue
                counter += 1
                item = (value, counter, text, ids, position)
                if len(heaps[feature]) < kept:
                    heapq.heappush(heaps[feature], item)
                elif value > heaps[feature][0][0]:
                    heapq.heapreplace(heaps[feature], item)
    out = {}
    for feature, heap in heaps.items():
        rows: list[dict] = []
        seen: set[tuple[int, ...]] = set()
        for value, _, text, ids, position in sorted(heap, reverse=True):
            start = max(0, position - width)
            if tuple(ids[start:position + 1]) in seen or len(rows) == per_feature:
                continue
            seen.add(tuple(ids[start:position + 1]))
            rows.append({"activation": value, "text": text, "position": position,
                         "token": token_strings(tokenizer, [ids[position]])[0],
                         "context": tokenizer.decode(ids[start:position]) + "[[" + token_strings(tokenizer, [ids[position]])[0] + "]]"})
        out[feature] = rows
    return out


def sae_features(model, tokenizer, sae: SAE, prompt: str, *, top_k: int = 5) -> dict:
    """The ``top_k`` most active features at every token of ``prompt`` and the reconstruction stats:
    ``{"tokens", "per_token": [{"position", "token", "features": [{"feature", "activation"}]}],
    "stats": {...}}``."""
    ids = encode(tokenizer, prompt)
    features, acts = feature_activations(model, sae, ids)
    tokens = token_strings(tokenizer, ids[0].tolist())
    order = cast("list[list[int]]", mx.argsort(-features[0], axis=-1)[:, :top_k].tolist())
    values = cast("list[list[float]]", features[0].tolist())
    per_token = []
    for position, token in enumerate(tokens):
        top = [{"feature": int(f), "activation": values[position][f]} for f in order[position] if values[position][f] > 0]
        per_token.append({"position": position, "token": token, "features": top})
    return {"tokens": tokens, "per_token": per_token, "stats": reconstruction_stats(sae, acts[0])}
