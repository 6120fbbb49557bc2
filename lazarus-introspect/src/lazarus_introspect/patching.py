"""Activation patching: which activations carry the difference between a clean and a corrupted prompt?

Run the clean prompt and cache its activations; then run the corrupted prompt with one
activation (a component at one layer and one position) replaced by its clean value, and measure
how much of the clean behaviour comes back. The metric is the log-probability difference of the
two answers after the prompt, ``log p(answer) - log p(wrong)``, each summed over its tokens (for
one-token answers this is the logit difference ``logit[answer] - logit[wrong]``), normalised so
that 1 means "as clean" and 0 means "as corrupted". Components: ``resid`` (``hook_resid_pre``), ``attn_out``,
``mlp_out``. All positions of one layer run as one batch (row i patches position i).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    continuation_logprob,
    emit,
    encode,
    load,
    target_tokens,
    token_strings,
    with_continuation,
)
from lazarus_introspect.probe_base import ProbeOptions, ProbeResult, check_outputs, header, result_json

if TYPE_CHECKING:
    import mlx.core as mx

COMPONENTS = {"resid": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out"}
#: clean and corrupted differences closer than this (nats) make normalised scores noise
NEAR_EQUAL = 0.1
#: a normalised score beyond this means the denominator is too small to divide by
BLOWN_UP = 3.0


def logit_diff(logits, answer_id: int, wrong_id: int):
    """``logit[answer] - logit[wrong]`` at the last position, per batch row (B,)."""
    import mlx.core as mx

    last = logits[:, -1].astype(mx.float32)
    return last[:, answer_id] - last[:, wrong_id]


def answer_diff(run, ids, answer: list[int], wrong: list[int]):
    """``log p(answer) - log p(wrong)`` after ``ids`` (B, T), per batch row (B,); ``run(ids)`` gives
    logits. One-token answers share one run (and the difference is the logit difference)."""
    start = ids.shape[1]
    if len(answer) == 1 and len(wrong) == 1:
        logits = run(ids)
        return continuation_logprob(logits, start, answer) - continuation_logprob(logits, start, wrong)
    return (continuation_logprob(run(with_continuation(ids, answer)), start, answer)
            - continuation_logprob(run(with_continuation(ids, wrong)), start, wrong))


def run_patched(model, corrupted_ids, clean_activation, name: str, positions: Sequence[int] | None = None):
    """Logits of the corrupted run with hook ``name`` set to ``clean_activation`` at ``positions`` (all if None)."""
    return activations.run_with_hooks(
        model, corrupted_ids, [(name, activations.replace_positions(clean_activation, positions))])


def patch_layer_positions(model, corrupted_ids, clean_activation, name: str, length: int | None = None):
    """Logits (T, S, vocab) of T corrupted runs in one batch; row i has position i patched from clean.

    ``corrupted_ids`` (1, S) may run past the T = ``length`` prompt positions (an answer's tokens,
    teacher-forced); only prompt positions are patched. ``clean_activation``: (1, T, ...)."""
    import mlx.core as mx

    total = corrupted_ids.shape[1]
    length = total if length is None else length
    batch = mx.broadcast_to(corrupted_ids, (length, total))
    eye = mx.eye(length, total, dtype=mx.bool_)  # row i, position i
    eye = eye.reshape(*eye.shape, *([1] * (clean_activation.ndim - 2)))
    if total > length:  # the answer's positions are never patched; pad the clean value to line up
        pad = [(0, 0), (0, total - length)] + [(0, 0)] * (clean_activation.ndim - 2)
        clean_activation = mx.pad(clean_activation, pad)

    def hook(activation, _name=None):
        return mx.where(eye, clean_activation.astype(activation.dtype), activation)

    return activations.run_with_hooks(model, batch, [(name, hook)])


def patch_scan(model, clean_ids, corrupted_ids, answer_id: int | Sequence[int], wrong_id: int | Sequence[int],
               components: Sequence[str] = ("resid", "attn_out", "mlp_out"), layers: Sequence[int] | None = None) -> dict:
    """Patch every (component, layer, position); returns normalised scores and the raw differences.

    ``answer_id`` / ``wrong_id``: a token id or a list of ids (a several-token answer: its
    log-probabilities are summed). ``{"clean_logit_diff", "corrupted_logit_diff", "scores":
    {component: [[score per position] per layer]}, "logit_diffs": {...same shape...}}``; the
    differences are ``log p(answer) - log p(wrong)`` (the logit difference for one-token answers).
    A score of 1 restores the clean difference.
    """
    import mlx.core as mx

    answer = [answer_id] if isinstance(answer_id, int) else list(answer_id)
    wrong = [wrong_id] if isinstance(wrong_id, int) else list(wrong_id)

    same_length(clean_ids, corrupted_ids, "patching")
    count = activations.num_layers(model)
    layers = list(range(count)) if layers is None else list(layers)
    names = {c: [activations.hook_name(COMPONENTS[c], layer) for layer in layers] for c in components}
    _, cache = activations.run_with_cache(model, clean_ids, [n for ns in names.values() for n in ns])
    clean_diff = answer_diff(model, clean_ids, answer, wrong).item()
    corrupted_diff = answer_diff(model, corrupted_ids, answer, wrong).item()
    denominator = clean_diff - corrupted_diff
    if abs(denominator) < 1e-6:
        raise LazarusError(f"the clean and corrupted prompts give the same logit difference ({clean_diff:.4g}) "
                           "between --answer and --wrong; choose prompts or answers the model tells apart")
    scores: dict[str, list[list[float]]] = {}
    diffs: dict[str, list[list[float]]] = {}
    length = corrupted_ids.shape[1]
    for component in components:
        scores[component], diffs[component] = [], []
        for name in names[component]:
            row = answer_diff(lambda ids, name=name: patch_layer_positions(model, ids, cache[name], name, length),
                              corrupted_ids, answer, wrong)
            mx.eval(row)
            values = row.tolist()
            diffs[component].append(values)
            scores[component].append([(v - corrupted_diff) / denominator for v in values])
    largest = max((abs(v) for rows in scores.values() for row in rows for v in row), default=0.0)
    return {"layers": layers, "clean_logit_diff": clean_diff, "corrupted_logit_diff": corrupted_diff,
            "scores": scores, "logit_diffs": diffs,
            # normalising by a near-zero clean - corrupted gap turns noise into huge scores
            "nearly_equal": abs(denominator) < NEAR_EQUAL or largest > BLOWN_UP}


def same_length(clean_ids, corrupted_ids, what: str) -> None:
    """Patching (``what``) swaps activations position by position: the prompts must be as long."""
    if clean_ids.shape != corrupted_ids.shape:
        raise LazarusError(f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one "
                           f"{corrupted_ids.shape[1]}; {what} needs prompts of the same length "
                           "(change a word for a word that is also one token)")


# -- the probe ------------------------------------------------------------------------------------
@attrs.define(kw_only=True)
class ContrastOptions(ProbeOptions):
    """A clean and a corrupted prompt and the two answers they lead to: the options ``patch`` and
    ``attribute`` share."""

    clean: str | None = setting(None, "The clean prompt.", required=True)
    corrupted: str | None = setting(None, "The corrupted prompt (same number of tokens).", required=True)
    answer: str | None = setting(None, "The clean answer (text or #ID).", required=True, metavar="TOKEN")
    wrong: str | None = setting(None, "The corrupted answer (text or #ID).", required=True, metavar="TOKEN")


@attrs.frozen(kw_only=True)
class Contrast:
    """A :class:`ContrastOptions` encoded: the prompts' ids (1, T) and tokens, the answers (``text``,
    ``ids``, ``tokens``, and ``id``/``token`` of the first) and notes on several-token answers."""

    clean_ids: mx.array
    corrupted_ids: mx.array
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    answer: dict
    wrong: dict
    notes: list[str]


def encode_contrast(tokenizer, options: ContrastOptions) -> Contrast:
    """Encode the prompts and the answers; two answers of the same tokens are a LazarusError."""
    assert options.clean is not None and options.corrupted is not None  # required settings
    clean_ids = encode(tokenizer, options.clean, "clean prompt")
    corrupted_ids = encode(tokenizer, options.corrupted, "corrupted prompt")
    targets, notes = {}, []
    for option in ("answer", "wrong"):
        text = getattr(options, option)
        ids, note = target_tokens(tokenizer, text, f"--{option}")
        tokens = token_strings(tokenizer, ids)
        targets[option] = {"text": text, "ids": ids, "tokens": tokens, "id": ids[0], "token": tokens[0]}
        notes += [note] if note else []
    if targets["answer"]["ids"] == targets["wrong"]["ids"]:
        raise LazarusError(f"--answer {options.answer!r} and --wrong {options.wrong!r} are the same tokens "
                           f"{targets['answer']['ids']}; give two different answers")
    return Contrast(clean_ids=clean_ids, corrupted_ids=corrupted_ids,
                    clean_tokens=token_strings(tokenizer, clean_ids[0].tolist()),
                    corrupted_tokens=token_strings(tokenizer, corrupted_ids[0].tolist()), notes=notes, **targets)


def position_labels(clean_tokens: list[str], corrupted_tokens: list[str]) -> list[str]:
    """``3:cat`` for a position where the prompts agree, ``3:cat/hat`` where they differ."""
    return [f"{i}:{c}" if c == k else f"{i}:{c}/{k}"
            for i, (c, k) in enumerate(zip(clean_tokens, corrupted_tokens, strict=True))]


def largest(scores: dict[str, list[list[float]]]) -> float:
    """The largest score of any component, layer and position (a patching probe's key figure)."""
    return max(v for grid in scores.values() for row in grid for v in row)


def checked_components(given, known, option: str = "--component") -> tuple[str, ...]:
    """``given`` (an options field), each one of ``known``: a LazarusError names the first that is not."""
    for component in given:
        if component not in known:
            raise LazarusError(f"{option} {component!r}: use one of {', '.join(known)}")
    return tuple(given)


@attrs.define(kw_only=True)
class PatchOptions(ContrastOptions):
    """The options of ``lazarus introspect patch`` (and the keys of a recipe stage)."""

    component: tuple[str, ...] = setting(tuple(COMPONENTS), "Components to patch; repeatable.",
                                         type=click.Choice(list(COMPONENTS)), shown_default=", ".join(COMPONENTS))


@attrs.frozen(kw_only=True)
class ContrastResult(ProbeResult):
    """The fields ``patch`` and ``attribute`` results share: the prompts, answers and layers."""

    clean: str
    corrupted: str
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    answer: dict  #: {"text", "ids", "tokens", "id", "token"}
    wrong: dict
    metric: str  #: what the scores measure, in words
    layers: list[int]


@attrs.frozen(kw_only=True)
class PatchResult(ContrastResult):
    """What ``patch`` found: per component a grid (layer x position) of restored fractions
    (``scores``, 1 = as clean) and of the raw differences (``logit_diffs``)."""

    clean_logit_diff: float
    corrupted_logit_diff: float
    scores: dict[str, list[list[float]]]
    logit_diffs: dict[str, list[list[float]]]
    nearly_equal: bool  #: clean and corrupted differ too little for the fractions to mean much
    max_score: float  #: the largest restored fraction on the grid (the key figure)


def _show_patch(result: PatchResult, options: PatchOptions) -> None:
    from lazarus_introspect.report import Report, heatmap

    report = Report(probe="patch", title=f"Activation patching — {options.model}", data=result_json(result))
    several = len(result.answer["ids"]) > 1 or len(result.wrong["ids"]) > 1
    report.notes.append(f"--answer {options.answer!r} = {result.answer['tokens']}, --wrong {options.wrong!r} = "
                        f"{result.wrong['tokens']}; the difference is log p(answer) - log p(wrong)"
                        + (" summed over each one's tokens" if several else ""))
    report.notes.append(f"clean logit diff {result.clean_logit_diff:.4g}, corrupted {result.corrupted_logit_diff:.4g}")
    raw = result.nearly_equal
    if raw:
        warning = (f"Warning: the clean and corrupted logit differences are nearly equal "
                   f"({result.clean_logit_diff:.4g} and {result.corrupted_logit_diff:.4g}), so restored fractions "
                   "divide by almost nothing; showing the raw differences log p(answer) - log p(wrong) instead "
                   "(choose prompts whose answers the model tells apart for fractions)")
        click.echo(warning, err=True)
        report.notes.append(warning)
    values = result.logit_diffs if raw else result.scores
    labels = position_labels(result.clean_tokens, result.corrupted_tokens)
    for component in values:
        title = (f"{component}: patched difference log p(answer) - log p(wrong)" if raw
                 else f"{component}: restored fraction of the clean difference")
        table = report.table(title, ["layer", *labels])
        for layer, row in zip(result.layers, values[component], strict=True):
            table.add_row(layer, *[f"{v:.2f}" for v in row])
        report.add_figure(f"patch_{component}", lambda component=component: heatmap(
            values[component], title=(f"patching {component}: raw difference" if raw
                                      else f"patching {component} (1 = clean, 0 = corrupted)"),
            xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
            yticklabels=result.layers, colorbar="log p(answer) - log p(wrong)" if raw else "restored fraction",
            center_zero=True),
            f"Patching {component} from the clean run, one layer and position at a time")
    emit(report, options.json, options.report)


@operation(options=PatchOptions, metric="max_score", name="patch", check=check_outputs, show=_show_patch, load=load)
def activation_patching(model, tokenizer, options: PatchOptions) -> PatchResult:
    """Activation patching clean -> corrupted over layers x positions; 1 = clean, 0 = corrupted."""
    assert options.clean is not None and options.corrupted is not None  # required settings
    components = checked_components(options.component, tuple(COMPONENTS))
    contrast = encode_contrast(tokenizer, options)
    scan = patch_scan(model, contrast.clean_ids, contrast.corrupted_ids, contrast.answer["ids"],
                      contrast.wrong["ids"], components)
    return PatchResult(
        **header("patch", options, model),
        clean=options.clean, corrupted=options.corrupted, clean_tokens=contrast.clean_tokens,
        corrupted_tokens=contrast.corrupted_tokens, answer=contrast.answer, wrong=contrast.wrong,
        metric="(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), LD = log p(answer) - log p(wrong), each "
               "summed over its tokens (= logit[answer] - logit[wrong] for one token)",
        **scan, max_score=largest(scan["scores"]))


#: the click command (derived from the operation), for code that imports it
patch_command = activation_patching.command("patch")
