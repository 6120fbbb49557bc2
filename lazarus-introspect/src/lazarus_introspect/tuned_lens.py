"""Tuned lens: a learned affine translator per layer, then the logit lens.

Each layer L gets ``T_L(h) = h + h @ A_L + b_L`` with ``A_L`` and ``b_L`` initialised to zero (so
training starts from the plain logit lens; the last layer's stays zero, as its lens is the output) and trained to minimise the KL divergence from the
model's final distribution to ``softmax(unembed(ln_final(T_L(h_L))))`` over the tokens of a text
file, one window of tokens per step. The model itself stays frozen. Translators are saved as ``translators.safetensors``
(``layers.{L}.weight`` (D, D), ``layers.{L}.bias`` (D,)) plus ``translators.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    read_saved,
    target_tokens,
)
from lazarus_introspect.probe_base import (
    ProbeOptions,
    ProbeResult,
    check_outputs,
    header,
    optional,
    result_json,
)

WEIGHTS_FILE = "translators.safetensors"
META_FILE = "translators.json"


def _kl_to_final(model, final_logprobs, hidden):
    """Mean over tokens of KL(final || lens(hidden)); ``hidden`` (N, D), ``final_logprobs`` (N, V)."""
    import mlx.core as mx

    logits = activations.lens(model, hidden).astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return (mx.exp(final_logprobs) * (final_logprobs - logprobs)).sum(axis=-1).mean()


def text_windows(tokenizer, text: str, *, seq_len: int = 64, max_tokens: int = 4096) -> list:
    """``text``'s tokens (at most ``max_tokens``) cut into windows of ``seq_len``: a list of (1, t) arrays."""
    import mlx.core as mx

    ids = tokenizer.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise LazarusError("--train-text has fewer than 2 tokens; give the tuned lens more text to train on")
    return [mx.array([ids[i:i + seq_len]], dtype=mx.int32) for i in range(0, len(ids), seq_len)
            if len(ids[i:i + seq_len]) >= 1]


def _window_states(model, window):
    """Residuals after every block (list of (t, D) float32) and final log-probabilities (t, V) of a window."""
    import mlx.core as mx

    names = [activations.hook_name("resid_post", layer) for layer in range(activations.num_layers(model))]
    logits, cache = activations.run_with_cache(model, window, names)
    logits = logits[0].astype(mx.float32)
    final = mx.stop_gradient(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    return [mx.stop_gradient(cache[n][0].astype(mx.float32)) for n in names], final


def translator_kl(model, windows, weights=None, biases=None) -> list[float]:
    """Mean KL(final || lens) per layer over ``windows``, through translators (None: the logit lens)."""
    import mlx.core as mx

    totals, count = None, 0
    for window in windows:
        states, final = _window_states(model, window)
        values = []
        for layer, hidden in enumerate(states):
            if weights is not None:
                hidden = hidden + hidden @ weights[layer] + biases[layer]
            values.append(_kl_to_final(model, final, hidden) * hidden.shape[0])
        mx.eval(values)
        values = [v.item() for v in values]
        totals = values if totals is None else [a + b for a, b in zip(totals, values, strict=True)]
        count += states[0].shape[0]
    assert totals is not None  # (text_windows gives at least one window)
    return [t / count for t in totals]


def train_translators(model, tokenizer, text: str, *, steps: int = 200, learning_rate: float = 1e-3,
                      seq_len: int = 64, max_tokens: int = 4096, seed: int = 0, progress=None) -> dict:
    """Train one translator per layer on ``text``; returns ``{"weights", "bias", "losses", "tokens"}``.

    Each step runs the frozen model on one window of ``seq_len`` tokens (windows in a seeded
    shuffled order) and takes one Adam step for every layer's translator, so memory stays that of
    one window whatever the text's length. ``weights[L]`` is ``A_L`` (D, D), ``bias[L]`` is
    ``b_L`` (D,); ``losses[L]`` holds the mean KL to the final layer over all windows before and
    after training. The last layer's translator stays zero (the identity): its lens already is
    the model's output, and an optimiser would only turn rounding noise into drift.
    ``progress(step)`` is called after each step.
    """
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    windows = text_windows(tokenizer, text, seq_len=seq_len, max_tokens=max_tokens)
    count = activations.num_layers(model)
    width = activations.hidden_size(model)
    params = [{"weight": mx.zeros((width, width)), "bias": mx.zeros((width,))} for _ in range(count)]
    optimizers = [optim.Adam(learning_rate=learning_rate) for _ in range(count)]

    def loss_fn(p, hidden, final):
        return _kl_to_final(model, final, hidden + hidden @ p["weight"] + p["bias"])

    grad_fn = mx.value_and_grad(loss_fn)
    before = translator_kl(model, windows)
    order = np.random.default_rng(seed).permutation(len(windows))
    for step in range(steps):
        states, final = _window_states(model, windows[order[step % len(windows)]])
        for layer in range(count - 1):  # the last layer's lens is the output itself: identity
            _, grads = grad_fn(params[layer], states[layer], final)
            optimizers[layer].update(params[layer], grads)  # type: ignore[arg-type]  # mlx's stub: any parameter tree, not only a Module
        mx.eval(params, [o.state for o in optimizers])
        if progress is not None:
            progress(step)
    weights, biases = [p["weight"] for p in params], [p["bias"] for p in params]
    after = translator_kl(model, windows, weights, biases)
    losses = [{"layer": layer, "kl_before": b, "kl_after": a}
              for layer, (b, a) in enumerate(zip(before, after, strict=True))]
    return {"weights": weights, "bias": biases, "losses": losses,
            "tokens": sum(w.shape[1] for w in windows)}


def save_translators(directory: str | Path, trained: dict, meta: dict, provenance: dict | None = None) -> Path:
    """Write ``translators.safetensors``, ``translators.json`` (and ``lazarus.json`` from
    ``provenance``) into ``directory`` atomically."""
    import mlx.core as mx

    from lazarus_introspect.report import output_dir

    with output_dir(directory, "--translators") as staging:
        tensors = {}
        for layer, (weight, bias) in enumerate(zip(trained["weights"], trained["bias"], strict=True)):
            tensors[f"layers.{layer}.weight"] = weight
            tensors[f"layers.{layer}.bias"] = bias
        mx.save_safetensors(str(staging / WEIGHTS_FILE), tensors, metadata={"format": "lazarus-tuned-lens"})
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if provenance is not None:
            from lazarus import provenance as provenance_module

            provenance_module.write(staging, provenance)
    return Path(directory)


def load_translators(directory: str | Path, model) -> tuple[list, list, dict]:
    """``(weights, biases, meta)`` from a translators folder, checked against ``model``'s shape."""
    weights_path = Path(directory) / WEIGHTS_FILE
    tensors, meta = read_saved(directory, WEIGHTS_FILE, META_FILE, "train translators first with "
                               "`lazarus introspect tuned-lens --train-text FILE --translators DIR`")
    count = activations.num_layers(model)
    width = model.args.hidden_size if hasattr(model.args, "hidden_size") else None
    weights, biases = [], []
    for layer in range(count):
        key_w, key_b = f"layers.{layer}.weight", f"layers.{layer}.bias"
        if key_w not in tensors or key_b not in tensors:
            raise LazarusError(f"{weights_path}: missing key {key_w if key_w not in tensors else key_b}; "
                               f"these translators were trained for a model with {meta.get('num_layers')} "
                               f"layers, this one has {count}")
        weight, bias = tensors[key_w], tensors[key_b]
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or bias.shape != (weight.shape[0],) or (
                width is not None and weight.shape[0] != width):
            raise LazarusError(f"{weights_path}: key {key_w} has shape {tuple(weight.shape)}, expected "
                               f"({width}, {width}); the translators belong to another model")
        weights.append(weight)
        biases.append(bias)
    return weights, biases, meta


def translator_transform(weights, biases):
    """The ``transform(layer, hidden)`` for :func:`logit_lens.read_layers` applying ``T_L``."""

    def transform(layer, hidden):
        weight, bias = weights[layer], biases[layer]
        hidden32 = hidden.astype(weight.dtype)
        return (hidden32 + hidden32 @ weight + bias).astype(hidden.dtype)

    return transform


@attrs.define(kw_only=True)
class TunedLensOptions(ProbeOptions):
    """The options of ``lazarus introspect tuned-lens`` (and the keys of a recipe stage)."""

    translators: str | None = setting(None, "Where translators are saved (with --train-text) or read from.",
                                      required=True, metavar="DIR", type=click.Path(file_okay=False))
    train_text: str | None = setting(None, "Train translators on this text file first (KL to the final layer).",
                                     metavar="FILE", type=click.Path(exists=True, dir_okay=False))
    steps: int = setting(200, "Training steps (one window of --seq-len tokens each; every layer is updated).",
                         type=click.IntRange(0), minimum=0)
    lr: float = setting(1e-3, "Adam learning rate.")
    seq_len: int = setting(64, "Window length for reading the training text.", type=click.IntRange(2), minimum=2)
    max_tokens: int = setting(4096, "Use at most this many tokens of the training text.", type=click.IntRange(2),
                              minimum=2)
    prompt: str | None = setting(None, "A prompt to read through the translators.", flags=("-p",))
    position: tuple[int, ...] = setting((-1,), "Token position(s) to read; repeatable.")
    top_k: int = setting(5, "Tokens per layer.", type=click.IntRange(1, 100), minimum=1, maximum=100)
    track: str | None = setting(None, "Follow this token across layers (text or #ID).", metavar="TOKEN")
    compare: bool = setting(True, "Also show the plain logit lens's final-prediction probability per layer.",
                            off="--no-compare")


@attrs.frozen(kw_only=True)
class TunedLensResult(ProbeResult):
    """What ``tuned-lens`` found: the translators' KL per layer and, with a prompt, the read-out
    (the logit lens's keys, see :func:`lazarus_introspect.logit_lens.read_layers`)."""

    translators: str  #: the translators folder
    #: ``{"steps", "tokens", "losses": [{"layer", "kl_before", "kl_after"}]}``
    training: dict
    tokens: list | None = optional()  #: the prompt's tokens (with a prompt)
    positions: list | None = optional()  #: the read-out per position (with a prompt)
    prompt: str | None = optional()
    track: dict | None = optional(present_with="positions")  #: the tracked target (with --track; null without)
    notes: list | None = optional()
    #: the key figure: mean over layers of KL(final || tuned lens) on the training text (None: unknown)
    mean_kl: float | None = None


def _check(options: TunedLensOptions) -> None:
    check_outputs(options)
    if options.train_text is None and options.prompt is None:
        raise LazarusError("give --train-text FILE to train translators, --prompt TEXT to read through them, "
                           "or both")


def _show(result: TunedLensResult, options: TunedLensOptions) -> None:
    from lazarus_introspect.logit_lens import build_report
    from lazarus_introspect.report import Report, line_plot

    data = result_json(result)
    title = f"Tuned lens — {options.model}"
    report = build_report(data, "tuned-lens", title) if result.positions is not None else \
        Report(probe="tuned-lens", title=title, data=data)
    losses = result.training["losses"]
    if losses:
        table = report.table("translator KL to the final layer", ["layer", "KL before (logit lens)", "KL after"])
        for row in losses:
            table.add_row(row["layer"], row["kl_before"], row["kl_after"])
        if options.train_text is not None:
            report.add_figure("translator_kl", lambda: line_plot(
                {"logit lens": [r["kl_before"] for r in losses], "tuned lens": [r["kl_after"] for r in losses]},
                title="KL(final || lens) on the training text", xlabel="layer", ylabel="KL (nats)"),
                "KL divergence to the final distribution before and after training the translators")
    emit(report, options.json, options.report)


@operation(options=TunedLensOptions, metric="mean_kl", name="tuned-lens", check=_check, show=_show, load=load)
def tuned_lens_probe(model, tokenizer, options: TunedLensOptions) -> TunedLensResult:
    """Tuned lens: train per-layer affine translators and/or read a prompt through them."""
    from lazarus_introspect.logit_lens import read_layers, track_info

    model_path, adapter_path, train_text = options.model, options.adapter, options.train_text
    assert options.translators is not None  # a required setting
    result = header("tuned-lens", options, model)
    result["translators"] = str(options.translators)
    if train_text is not None:
        text = Path(train_text).read_text(encoding="utf-8")
        trained = train_translators(model, tokenizer, text, steps=options.steps, learning_rate=options.lr,
                                    seq_len=options.seq_len, max_tokens=options.max_tokens)
        meta = {"format": "lazarus-tuned-lens", "model": str(model_path),
                "adapter": str(adapter_path) if adapter_path else None,
                "family": getattr(model, "family", None), "num_layers": activations.num_layers(model),
                "hidden_size": int(trained["weights"][0].shape[0]), "steps": options.steps,
                "learning_rate": options.lr, "train_text": str(train_text),
                "train_text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "train_tokens": trained["tokens"], "losses": trained["losses"]}
        from lazarus import provenance

        record = provenance.for_model(model, data_files=[train_text], command="introspect tuned-lens",
                                      adapter_path=str(adapter_path) if adapter_path else None,
                                      adapter_config=Path(adapter_path) / "adapter_config.json" if adapter_path else None)
        save_translators(options.translators, trained, meta, record)
        result["training"] = {"steps": options.steps, "tokens": trained["tokens"], "losses": trained["losses"]}
        weights, biases = trained["weights"], trained["bias"]
    else:
        weights, biases, meta = load_translators(options.translators, model)
        result["training"] = {"steps": meta.get("steps"), "tokens": meta.get("train_tokens"),
                              "losses": meta.get("losses")}

    if options.prompt is not None:
        prompt, track = options.prompt, options.track
        ids = encode(tokenizer, prompt)
        track_id, note = (None, "")
        if track is not None:
            track_id, note = target_tokens(tokenizer, track, "--track")
        read = read_layers(model, tokenizer, ids, positions=options.position, top_k=options.top_k, track_id=track_id,
                           transform=translator_transform(weights, biases))
        result.update(read)
        result["prompt"] = prompt
        result["track"] = None if track is None or track_id is None else track_info(tokenizer, track, track_id)
        if note:
            result["notes"] = [f"{note}: rank and prob are its first token's; log p sums over all of them "
                               "(at the last position)"]
        if options.compare:
            plain = read_layers(model, tokenizer, ids, positions=options.position, top_k=1, track_id=track_id)
            for tuned_entry, plain_entry in zip(result["positions"], plain["positions"], strict=True):
                for tuned_layer, plain_layer in zip(tuned_entry["layers"], plain_entry["layers"], strict=True):
                    tuned_layer["logit_lens_final_prediction_prob"] = plain_layer["final_prediction_prob"]
    losses = result["training"]["losses"]
    after = [row["kl_after"] for row in losses or () if row.get("kl_after") is not None]
    result["mean_kl"] = sum(after) / len(after) if after else None
    return TunedLensResult(**result)


#: the click command (derived from the operation), for code that imports it
tuned_lens_command = tuned_lens_probe.command("tuned-lens")
