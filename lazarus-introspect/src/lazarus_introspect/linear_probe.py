"""Linear probes: can a label be read linearly off the residual stream at each layer?

For labelled prompts (JSONL ``{"text", "label"}``) each prompt's residual stream after every
block is pooled (last token or mean), split into train and held-out sets (stratified, seeded),
and a logistic regression (softmax regression for more than two labels, numpy, L2-regularised,
on standardised features) is fitted per layer. The table shows train and held-out accuracy per
layer against chance. The best layer's direction is saved for ``lazarus introspect steer``:
``direction.safetensors`` (``direction`` (D,), unit norm, pointing from the first label to the
second; plus ``directions`` (C, D) one per label) and ``direction.json`` (layer, hook, labels,
accuracy, the class means' separation along the direction).
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.options import SEED
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, load, read_labelled, read_saved
from lazarus_introspect.probe_base import (
    ProbeOptions,
    ProbeResult,
    check_outputs,
    header,
    optional,
    result_json,
)

DIRECTION_WEIGHTS = "direction.safetensors"
DIRECTION_META = "direction.json"


def stratified_split(labels, test_fraction: float, seed: int):
    """Train and test index arrays with each label split in the same proportion (>= 1 test each)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train: list[int] = []
    test: list[int] = []
    for value in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == value)
        rng.shuffle(members)
        n_test = max(1, int(round(len(members) * test_fraction)))
        if n_test >= len(members):
            raise LazarusError(f"label {value!r} has only {len(members)} example(s); every label needs at "
                               "least 2 (one to train on, one to test on)")
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def fit_logistic(features, targets, num_classes: int, *, l2: float = 1e-2, steps: int = 500,
                 learning_rate: float = 0.5):
    """Softmax regression by full-batch gradient descent on standardised ``features`` (N, D).

    ``targets`` are class indices. Returns ``(weights (C, D), bias (C,), mean (D,), scale (D,))``
    so that ``predict`` computes ``argmax(((x - mean) / scale) @ weights.T + bias)``.
    """
    import numpy as np

    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0
    x = (features - mean) / scale
    n, width = x.shape
    onehot = np.eye(num_classes)[targets]
    weights = np.zeros((num_classes, width))
    bias = np.zeros(num_classes)
    # Nesterov-style momentum keeps this deterministic, dependency-free and fast for D up to a few thousand
    velocity_w, velocity_b = np.zeros_like(weights), np.zeros_like(bias)
    for _ in range(steps):
        logits = x @ weights.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        error = (probs - onehot) / n
        grad_w = error.T @ x + l2 * weights
        grad_b = error.sum(axis=0)
        velocity_w = 0.9 * velocity_w - learning_rate * grad_w
        velocity_b = 0.9 * velocity_b - learning_rate * grad_b
        weights += velocity_w
        bias += velocity_b
    return weights, bias, mean, scale


def predict(model_params, features):
    """Class indices for ``features`` (N, D) under ``fit_logistic``'s returned parameters."""
    import numpy as np

    weights, bias, mean, scale = model_params
    x = (np.asarray(features, dtype=np.float64) - mean) / scale
    return np.argmax(x @ weights.T + bias, axis=1)


def probe_layers(states, labels, *, test_fraction: float = 0.25, seed: int = 0, l2: float = 1e-2,
                 steps: int = 500) -> dict:
    """Fit one probe per layer on ``states`` (layers, N, D) with string ``labels`` (N,).

    Returns ``{"labels", "train_size", "test_size", "chance", "layers": [{"layer", "train_accuracy",
    "test_accuracy"}], "best_layer", "fits": [per-layer parameters]}`` (``fits`` is not JSON).
    """
    import numpy as np

    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LazarusError(f"the data has a single label {classes[0]!r}; a probe needs at least two labels")
    targets = np.array([classes.index(label) for label in labels])
    train, test = stratified_split(targets, test_fraction, seed)
    chance = float(np.bincount(targets[test], minlength=len(classes)).max() / len(test))
    rows, fits = [], []
    for layer, features in enumerate(states):
        fit = fit_logistic(features[train], targets[train], len(classes), l2=l2, steps=steps)
        fits.append(fit)
        rows.append({
            "layer": layer,
            "train_accuracy": float((predict(fit, features[train]) == targets[train]).mean()),
            "test_accuracy": float((predict(fit, features[test]) == targets[test]).mean()),
        })
    best = max(rows, key=lambda r: (r["test_accuracy"], r["train_accuracy"], -r["layer"]))["layer"]
    return {"labels": classes, "train_size": int(len(train)), "test_size": int(len(test)), "chance": chance,
            "layers": rows, "best_layer": best, "fits": fits, "targets": targets, "train": train}


def probe_direction(fit, states_layer, targets, train) -> dict:
    """The probe's directions in residual-stream units: unit vectors, one per label and the binary one.

    The standardisation is folded back in (``w / scale``), so the direction lives in the same
    space as the residual stream and can be added to it.
    """
    import numpy as np

    weights, _, _, scale = fit
    raw = weights / scale  # (C, D) in residual units
    per_class = raw - raw.mean(axis=0, keepdims=True)
    per_class /= np.maximum(np.linalg.norm(per_class, axis=1, keepdims=True), 1e-12)
    binary = raw[1] - raw[0]
    binary /= max(np.linalg.norm(binary), 1e-12)
    x = states_layer[train]
    t = targets[train]
    means = np.stack([x[t == c].mean(axis=0) for c in range(raw.shape[0])])
    return {
        "direction": binary.astype(np.float32),
        "directions": per_class.astype(np.float32),
        # how far apart the two first labels' means are along the direction: a natural steering scale
        "mean_separation": float((means[1] - means[0]) @ binary),
        "mean_norm": float(np.linalg.norm(x, axis=1).mean()),
    }


def save_direction(directory: str | Path, direction: dict, meta: dict, provenance: dict | None = None) -> Path:
    """Write ``direction.safetensors``, ``direction.json`` (and ``lazarus.json`` from ``provenance``)
    into ``directory`` atomically."""
    import mlx.core as mx

    from lazarus_introspect.report import output_dir

    with output_dir(directory, "--save") as staging:
        mx.save_safetensors(str(staging / DIRECTION_WEIGHTS),
                            {"direction": mx.array(direction["direction"]),
                             "directions": mx.array(direction["directions"])},
                            metadata={"format": "lazarus-direction"})
        (staging / DIRECTION_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if provenance is not None:
            from lazarus import provenance as provenance_module

            provenance_module.write(staging, provenance)
    return Path(directory)


def load_direction(directory: str | Path, toward: str | None = None):
    """``(direction (D,) mx.array, meta)`` from a saved probe folder.

    Without ``toward`` it is the binary direction (first label -> second); with ``toward`` the
    per-label direction of that label.
    """
    weights_path, meta_path = Path(directory) / DIRECTION_WEIGHTS, Path(directory) / DIRECTION_META
    tensors, meta = read_saved(directory, DIRECTION_WEIGHTS, DIRECTION_META,
                               "save a direction with `lazarus introspect probe --save DIR`")
    if toward is None:
        if "direction" not in tensors:
            raise LazarusError(f"{weights_path}: missing key 'direction'")
        return tensors["direction"], meta
    labels = meta.get("labels", [])
    if toward not in labels:
        raise LazarusError(f"--toward {toward!r} is not a label of {meta_path}; labels: {', '.join(labels)}")
    return tensors["directions"][labels.index(toward)], meta


@attrs.define(kw_only=True)
class LinearProbeOptions(ProbeOptions):
    """The options of ``lazarus introspect probe`` (and the keys of a recipe stage)."""

    data: str | None = setting(None, 'Labelled prompts, JSONL: {"text": ..., "label": ...} per line.', required=True,
                               metavar="FILE", type=click.Path(exists=True, dir_okay=False))
    pool: str = setting("last", "Represent a prompt by its last token's residual or the mean over its tokens.",
                        choices=("last", "mean"))
    test_fraction: float = setting(0.25, "Fraction of each label held out for testing.",
                                   type=click.FloatRange(0.05, 0.9), minimum=0.05, maximum=0.9)
    seed: int = setting(0, "Seed of the train/test split.", type=SEED)
    l2: float = setting(1e-2, "L2 penalty.", type=click.FloatRange(0), minimum=0)
    steps: int = setting(500, "Gradient steps per probe.", type=click.IntRange(1), minimum=1)
    shuffle_labels: bool = setting(False, "Control: shuffle the labels (accuracy should drop to chance).")
    save: str | None = setting(None, "Save the best layer's direction here (for `introspect steer --direction DIR`).",
                               metavar="DIR", type=click.Path(file_okay=False))


@attrs.frozen(kw_only=True)
class LinearProbeResult(ProbeResult):
    """What ``probe`` found: train and held-out accuracy per layer, the best layer and its accuracy."""

    data: str  #: the labelled prompts file
    examples: int  #: how many prompts
    pool: str
    shuffled_labels: bool
    hook: str  #: where the residual is read
    labels: list  #: the labels, sorted (the direction points from the first to the second)
    train_size: int
    test_size: int
    chance: float  #: the held-out accuracy of always answering the most common label
    layers: list  #: ``[{"layer", "train_accuracy", "test_accuracy"}]``
    best_layer: int  #: the layer with the best held-out accuracy
    saved: dict | None = optional()  #: ``{"dir", "layer", "mean_separation"}`` with --save
    best_accuracy: float  #: the key figure: the best layer's held-out accuracy


def _check(options: LinearProbeOptions) -> None:
    check_outputs(options)
    assert options.data is not None  # a required setting
    read_labelled(options.data)


def _show(result: LinearProbeResult, options: LinearProbeOptions) -> None:
    from lazarus_introspect.report import Report, line_plot

    report = Report(probe="probe", title=f"Linear probes — {options.model}", data=result_json(result))
    table = report.table(f"probe accuracy per layer ({result.examples} prompts, labels {', '.join(result.labels)}, "
                         f"chance {result.chance:.2f})", ["layer", "train acc", "held-out acc", ""])
    for row in result.layers:
        table.add_row(row["layer"], row["train_accuracy"], row["test_accuracy"],
                      "best" if row["layer"] == result.best_layer else "")
    if result.saved:
        report.notes.append(f"saved layer {result.best_layer}'s direction to {result.saved['dir']}")
    report.add_figure("accuracy", lambda: line_plot(
        {"held-out": [r["test_accuracy"] for r in result.layers],
         "train": [r["train_accuracy"] for r in result.layers],
         "chance": [result.chance] * len(result.layers)},
        title="linear probe accuracy per layer", xlabel="layer", ylabel="accuracy"), "Probe accuracy per layer")
    emit(report, options.json, options.report)


@operation(options=LinearProbeOptions, metric="best_accuracy", name="probe", check=_check, show=_show, load=load)
def linear_probe(model, tokenizer, options: LinearProbeOptions) -> LinearProbeResult:
    """Linear probes per layer on labelled prompts; held-out accuracy per layer."""
    import numpy as np

    model_path, adapter_path, data_path, pool, seed = (options.model, options.adapter, options.data, options.pool,
                                                       options.seed)
    assert data_path is not None  # a required setting
    records = read_labelled(data_path)
    labels = [r["label"] for r in records]
    if options.shuffle_labels:
        labels = list(np.random.default_rng(seed + 1).permutation(labels))
    states = activations.prompt_representations(model, tokenizer, [r["text"] for r in records], pool=pool)
    fitted = probe_layers(states, labels, test_fraction=options.test_fraction, seed=seed, l2=options.l2,
                          steps=options.steps)
    result = header("probe", options, model)
    result.update({"data": str(data_path), "examples": len(records), "pool": pool,
                   "shuffled_labels": options.shuffle_labels, "hook": "blocks.{L}.hook_resid_post"})
    result.update({k: fitted[k] for k in ("labels", "train_size", "test_size", "chance", "layers", "best_layer")})
    best = fitted["best_layer"]
    best_row = fitted["layers"][best]
    if options.save:
        direction = probe_direction(fitted["fits"][best], states[best], fitted["targets"], fitted["train"])
        meta = {"format": "lazarus-direction", "source": "probe", "model": str(model_path),
                "adapter": str(adapter_path) if adapter_path else None, "family": getattr(model, "family", None),
                "layer": best, "hook": f"blocks.{best}.hook_resid_post", "pool": pool,
                "labels": fitted["labels"], "negative_label": fitted["labels"][0],
                "positive_label": fitted["labels"][1], "test_accuracy": best_row["test_accuracy"],
                "train_accuracy": best_row["train_accuracy"], "mean_separation": direction["mean_separation"],
                "mean_norm": direction["mean_norm"], "data": str(data_path)}
        from lazarus import provenance

        record = provenance.for_model(model, data_files=[data_path], command="introspect probe",
                                      adapter_path=str(adapter_path) if adapter_path else None,
                                      adapter_config=Path(adapter_path) / "adapter_config.json" if adapter_path else None)
        save_direction(options.save, direction, meta, record)
        result["saved"] = {"dir": str(options.save), "layer": best, "mean_separation": direction["mean_separation"]}
    return LinearProbeResult(**result, best_accuracy=best_row["test_accuracy"])


#: the click command (derived from the operation), for code that imports it
probe_command = linear_probe.command("probe")
