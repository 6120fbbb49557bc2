"""Attribution patching: which components carry a clean/corrupted difference, without N runs.

``lazarus introspect attribute`` estimates activation patching to first order: for every layer x
position of ``resid_pre``, ``attn_out`` and ``mlp_out``, ``grad(metric at the corrupted run) .
(clean - corrupted activation)``, from one clean forward and one corrupted forward and backward
pass. ``--compare`` also runs real activation patching on the same grid and reports how well the
two agree. Direct logit attribution (``dla``) is in :mod:`lazarus_introspect.dla`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import continuation_logprob, emit, load, parse_layers
from lazarus_introspect.dla import has_branch_hooks
from lazarus_introspect.patching import (
    ContrastOptions,
    ContrastResult,
    checked_components,
    encode_contrast,
    largest,
    patch_scan,
    position_labels,
    same_length,
)
from lazarus_introspect.probe_base import check_outputs, header, optional, result_json

#: attribution-patching component -> the activation-patching component of ``patch`` it matches
PATCH_COMPONENTS = {"resid_pre": "resid", "attn_out": "attn_out", "mlp_out": "mlp_out"}


# -- attribution patching -------------------------------------------------------------------------
def attribution_patching(model, clean_ids, corrupt_ids, metric: Callable, *,
                         components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                         layers: Sequence[int] | None = None, positions: int | None = None) -> dict:
    """First-order estimate of activation patching for every component x layer x position.

    ``metric(logits) -> scalar mx.array`` (differentiable) is evaluated on the model's logits for
    ``clean_ids`` and ``corrupt_ids`` (same shape (B, S)). For each hook ``blocks.{L}.hook_{c}`` the
    estimate at position ``p`` is ``sum over batch and features of grad * (clean - corrupt)``,
    the gradient taken at the corrupted run: what patching the clean activation into every row at
    ``p`` would change the metric by, to first order. ``positions``: only the first that many
    positions are reported (e.g. the prompt, when the ids go on with an answer's tokens).

    Returns ``{"layers", "clean_metric", "corrupt_metric", "estimates": {component: [[per
    position] per layer]}, "scores": same / (clean - corrupt)}`` (scores: 1 = as clean).
    """
    import mlx.core as mx

    same_length(clean_ids, corrupt_ids, "attribution patching")
    count = activations.num_layers(model)
    layers = list(range(count)) if layers is None else activations.check_layers(model, layers, "--layers")
    names = [activations.hook_name(c, layer) for c in components for layer in layers]
    missing = [n for n in names if n not in set(model.hook_names())]
    if missing:
        raise LazarusError(f"the {getattr(model, 'family', 'loaded')} model does not fire {missing[0]}; "
                           f"use --component resid_pre (hooks it has: {', '.join(model.hook_names()[:4])} ...)")
    clean_logits, clean_cache = activations.run_with_cache(model, clean_ids, names)
    clean_metric = metric(clean_logits)
    mx.eval(clean_metric, clean_cache)

    shapes = {n: clean_cache[n].shape for n in names}

    def corrupted(deltas):
        captured = {}

        def add(name):
            def hook(activation, _name=None):
                captured[name] = activation
                return activation + deltas[name].astype(activation.dtype)
            return hook

        logits = activations.run_with_hooks(model, corrupt_ids, [(n, add(n)) for n in names])
        return metric(logits), captured

    zeros = {n: mx.zeros(shapes[n], dtype=mx.float32) for n in names}
    (corrupt_metric, corrupt_cache), grads = mx.value_and_grad(corrupted)(zeros)
    mx.eval(corrupt_metric, corrupt_cache, grads)
    clean_value, corrupt_value = float(clean_metric.item()), float(corrupt_metric.item())
    length = clean_ids.shape[1] if positions is None else positions
    denominator = clean_value - corrupt_value
    estimates: dict[str, list[list[float]]] = {}
    scores: dict[str, list[list[float]]] = {}
    for component in components:
        estimates[component], scores[component] = [], []
        for layer in layers:
            name = activations.hook_name(component, layer)
            diff = clean_cache[name].astype(mx.float32) - corrupt_cache[name].astype(mx.float32)
            per_position = (grads[name] * diff).sum(axis=(0, 2))[:length].tolist()
            estimates[component].append(per_position)
            scores[component].append([v / denominator if denominator else float("nan") for v in per_position])
    return {"layers": layers, "clean_metric": clean_value, "corrupt_metric": corrupt_value,
            "estimates": estimates, "scores": scores}


def answer_metric(length: int, answer: Sequence[int], wrong: Sequence[int]) -> tuple[Callable, Callable]:
    """``(ids_for(prompt_ids), metric)`` for ``log p(answer) - log p(wrong)`` after a prompt of
    ``length`` tokens, as ``patch`` measures it (each summed over its tokens; the logit difference
    for one-token answers). Several-token answers run as two rows, the prompt followed by each
    answer (teacher-forced, right-padded), so one forward pass covers both."""
    import mlx.core as mx

    answer, wrong = list(answer), list(wrong)
    if len(answer) == 1 and len(wrong) == 1:
        def ids_for(prompt_ids):
            return prompt_ids

        def metric(logits):
            return (continuation_logprob(logits, length, answer) - continuation_logprob(logits, length, wrong))[0]

        return ids_for, metric
    width = length + max(len(answer), len(wrong)) - 1

    def padded_ids_for(prompt_ids):
        rows = []
        for target in (answer, wrong):
            row = prompt_ids[0].tolist() + target[:-1]
            rows.append(row + [row[-1]] * (width - len(row)))  # padding after the answer is never read
        return mx.array(rows, dtype=mx.int32)

    def paired_metric(logits):
        return (continuation_logprob(logits[:1], length, answer) - continuation_logprob(logits[1:], length, wrong))[0]

    return padded_ids_for, paired_metric


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of two equally long lists (None when either is constant)."""
    import numpy as np

    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def compare_with_patching(model, clean_ids, corrupted_ids, answer: Sequence[int], wrong: Sequence[int],
                          attribution: dict, components: Sequence[str]) -> dict:
    """Run activation patching (:func:`~lazarus_introspect.patching.patch_scan`) on the grid of
    ``attribution`` and return its scores and the correlation of the two, overall and per component."""
    scan = patch_scan(model, clean_ids, corrupted_ids, list(answer), list(wrong),
                      [PATCH_COMPONENTS[c] for c in components], attribution["layers"])
    patched = {c: scan["scores"][PATCH_COMPONENTS[c]] for c in components}
    flat_a, flat_p, per_component = [], [], {}
    for c in components:
        a = [v for row in attribution["scores"][c] for v in row]
        p = [v for row in patched[c] for v in row]
        per_component[c] = correlation(a, p)
        flat_a += a
        flat_p += p
    return {"patching_scores": patched, "correlation": correlation(flat_a, flat_p),
            "correlation_per_component": per_component,
            "max_abs_error": max((abs(a - p) for a, p in zip(flat_a, flat_p, strict=True)), default=0.0)}


# -- the probe ------------------------------------------------------------------------------------
@attrs.define(kw_only=True)
class AttributeOptions(ContrastOptions):
    """The options of ``lazarus introspect attribute`` (and the keys of a recipe stage)."""

    component: tuple[str, ...] | None = setting(
        None, "Components to attribute; repeatable (default: all the model exposes).", many=True,
        type=click.Choice(list(PATCH_COMPONENTS)))
    layers: str = setting("all", "Layers: all, 0,2,-1 or 1-3.")
    compare: bool = setting(False, "Also run real activation patching on the same grid and report the correlation.",
                            off="--no-compare")


@attrs.frozen(kw_only=True)
class AttributeResult(ContrastResult):
    """What ``attribute`` estimated: per component a grid (layer x position) of grad x difference
    (``estimates``) and of estimated restored fractions (``scores``, 1 = as clean); with
    ``compare``, real patching's scores on the same grid and how well the two agree."""

    components: list[str]
    clean_metric: float  #: LD of the clean prompt
    corrupt_metric: float  #: LD of the corrupted prompt
    estimates: dict[str, list[list[float]]]
    scores: dict[str, list[list[float]]]
    patching_scores: dict[str, list[list[float]]] | None = optional()
    correlation: float | None = optional()  #: with activation patching, over the whole grid
    correlation_per_component: dict[str, float | None] | None = optional()
    max_abs_error: float | None = optional()
    notes: list[str]
    max_score: float  #: the largest estimated restored fraction on the grid (the key figure)


def _show_attribute(result: AttributeResult, options: AttributeOptions) -> None:
    emit(build_attribute_report(result_json(result), f"Attribution patching — {options.model}"), options.json,
         options.report)


@operation(options=AttributeOptions, metric="max_score", name="attribute", check=check_outputs,
           show=_show_attribute, load=load)
def attribution_probe(model, tokenizer, options: AttributeOptions) -> AttributeResult:
    """Attribution patching: grad x (clean - corrupted) for every layer x position, one backward pass."""
    assert options.clean is not None and options.corrupted is not None  # required settings
    contrast = encode_contrast(tokenizer, options)
    answer, wrong = contrast.answer["ids"], contrast.wrong["ids"]
    components = checked_components(options.component or (), tuple(PATCH_COMPONENTS))
    if not components:
        components = tuple(PATCH_COMPONENTS) if has_branch_hooks(model) else ("resid_pre",)
    chosen = parse_layers(options.layers, activations.num_layers(model))
    same_length(contrast.clean_ids, contrast.corrupted_ids, "attribution patching")
    length = contrast.clean_ids.shape[1]
    ids_for, metric = answer_metric(length, answer, wrong)
    scan = attribution_patching(model, ids_for(contrast.clean_ids), ids_for(contrast.corrupted_ids), metric,
                                components=components, layers=chosen, positions=length)
    if abs(scan["clean_metric"] - scan["corrupt_metric"]) < 1e-6:
        raise LazarusError(f"the clean and corrupted prompts give the same logit difference "
                           f"({scan['clean_metric']:.4g}) between --answer and --wrong; choose prompts or "
                           "answers the model tells apart")
    compared = (compare_with_patching(model, contrast.clean_ids, contrast.corrupted_ids, answer, wrong, scan,
                                      components) if options.compare else {})
    notes = [*contrast.notes, f"LD clean {scan['clean_metric']:.4g}, corrupted {scan['corrupt_metric']:.4g}"]
    if compared:
        per = ", ".join(f"{c} {_fmt(v)}" for c, v in compared["correlation_per_component"].items())
        notes.append(f"correlation with activation patching: {_fmt(compared['correlation'])} overall ({per}); "
                     f"largest difference {compared['max_abs_error']:.3g}")
    return AttributeResult(
        **header("attribute", options, model), clean=options.clean, corrupted=options.corrupted,
        clean_tokens=contrast.clean_tokens, corrupted_tokens=contrast.corrupted_tokens, components=list(components),
        answer=contrast.answer, wrong=contrast.wrong,
        metric="LD = log p(answer) - log p(wrong) (= logit difference for one-token answers); "
               "score = grad(LD at corrupted) . (clean - corrupted) / (LD_clean - LD_corrupted)",
        **scan, **compared, notes=notes,
        max_score=largest(scan["scores"]))


#: the click command (derived from the operation), for code that imports it
attribute_command = attribution_probe.command("attribute")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_attribute_report(result: dict, title: str):
    """One table and heatmap per component (and the patching heatmaps and a scatter with --compare)."""
    from lazarus_introspect.report import Report, heatmap, scatter_figure

    report = Report(probe="attribute", title=title, data=result)
    report.notes.extend(result.get("notes", []))
    labels = position_labels(result["clean_tokens"], result["corrupted_tokens"])
    for component in result["components"]:
        table = report.table(f"{component}: estimated restored fraction (attribution patching)", ["layer", *labels])
        for layer, row in zip(result["layers"], result["scores"][component], strict=True):
            table.add_row(layer, *[f"{v:.2f}" for v in row])
        report.add_figure(f"attribute_{component}", lambda component=component: heatmap(
            result["scores"][component], title=f"attribution patching {component} (1 = clean)",
            xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
            yticklabels=result["layers"], colorbar="estimated restored fraction", center_zero=True),
            f"grad x (clean - corrupted) for {component}, normalised by LD_clean - LD_corrupted")
        if "patching_scores" in result:
            report.add_figure(f"patch_{component}", lambda component=component: heatmap(
                result["patching_scores"][component], title=f"activation patching {component} (1 = clean)",
                xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
                yticklabels=result["layers"], colorbar="restored fraction", center_zero=True),
                f"Real activation patching of {component}, for comparison")
    if "patching_scores" in result:
        points = {c: ([v for row in result["patching_scores"][c] for v in row],
                      [v for row in result["scores"][c] for v in row]) for c in result["components"]}
        report.add_figure("attribute_vs_patch", lambda: scatter_figure(
            points, title=f"attribution vs activation patching (r = {_fmt(result.get('correlation'))})",
            xlabel="activation patching", ylabel="attribution patching"),
            "Each point is one layer x position x component")
    return report
