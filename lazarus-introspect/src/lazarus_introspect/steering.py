"""Steering: add a direction to the residual stream during generation.

The direction comes from ``lazarus introspect probe --save DIR`` (``--direction DIR``) or is the
difference of the mean residuals of two prompt sets (``--positive FILE --negative FILE``, one
prompt per line, last token, at the steering layer). It is added, times ``--coef``, to
``blocks.{L}.hook_resid_post`` at every position of every forward pass while ``lazarus.generate``
runs, for each chosen layer. Coefficient 0 adds nothing and reproduces plain generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, generate_text, load, read_lines
from lazarus_introspect.probe_base import ProbeOptions, ProbeResult, check_outputs, header, result_json


def steering_hook(direction, coefficient: float):
    """A hook function adding ``coefficient * direction`` (D,) to every position."""

    def hook(activation, _name=None):
        return activation + (coefficient * direction).astype(activation.dtype)

    return hook


def steering_hooks(direction, layers: Sequence[int], coefficient: float) -> list:
    """``[(hook name, fn)]`` steering ``blocks.{L}.hook_resid_post`` for each layer in ``layers``."""
    return [(activations.hook_name("resid_post", layer), steering_hook(direction, coefficient)) for layer in layers]


def mean_difference_direction(model, tokenizer, positive: Sequence[str], negative: Sequence[str], layer: int,
                              *, pool: str = "last"):
    """``mean(resid(positive)) - mean(resid(negative))`` after block ``layer``: an mx.array (D,)."""
    import mlx.core as mx

    pos = activations.prompt_representations(model, tokenizer, positive, pool=pool)[layer]
    neg = activations.prompt_representations(model, tokenizer, negative, pool=pool)[layer]
    return mx.array(pos.mean(axis=0) - neg.mean(axis=0))


def steer(model, tokenizer, prompt: str, direction, layers: Sequence[int], coefficient: float,
          max_tokens: int = 32, plain: dict | None = None) -> dict:
    """Greedy text from ``prompt`` with and without steering: ``{"steered", "unsteered", ...}``.

    ``plain`` is an earlier unsteered :func:`generate_text` result for the same prompt, if any.
    """
    plain = plain or generate_text(model, tokenizer, prompt, max_tokens)
    steered = generate_text(model, tokenizer, prompt, max_tokens, steering_hooks(direction, layers, coefficient))
    return {"prompt": prompt, "unsteered": plain["text"], "steered": steered["text"],
            "unsteered_token_ids": plain["token_ids"], "steered_token_ids": steered["token_ids"],
            "changed": plain["token_ids"] != steered["token_ids"]}


@attrs.define(kw_only=True)
class SteerOptions(ProbeOptions):
    """The options of ``lazarus introspect steer`` (and the keys of a recipe stage)."""

    prompt: tuple[str, ...] | None = setting(None, "Prompt(s) to generate from; repeatable.", required=True,
                                             flags=("-p",))
    direction: str | None = setting(None, "A direction saved by `lazarus introspect probe --save DIR`.",
                                    metavar="DIR", type=click.Path(exists=True, file_okay=False))
    toward: str | None = setting(None, "With --direction: steer toward this label's direction (default: first -> "
                                       "second label).", metavar="LABEL")
    positive: str | None = setting(None, "Prompts (one per line) whose mean residual the direction points toward.",
                                   metavar="FILE", type=click.Path(exists=True, dir_okay=False))
    negative: str | None = setting(None, "Prompts (one per line) whose mean residual the direction points away "
                                         "from.", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
    layer: tuple[int, ...] = setting((), "Layer(s) to steer after (repeatable; default: the probe's layer, or the "
                                         "middle layer).")
    coef: tuple[float, ...] = setting((4.0,), "Coefficient(s) multiplying the direction; repeatable (one column "
                                              "each).")
    normalize: bool = setting(False, "Scale a mean-difference direction to unit norm (probe directions are unit "
                                     "already).", off="--no-normalize")
    max_tokens: int = setting(32, "Tokens to generate.", type=click.IntRange(1), minimum=1)


@attrs.frozen(kw_only=True)
class SteerResult(ProbeResult):
    """What ``steer`` generated: one run per prompt and coefficient, steered and unsteered."""

    #: where the direction came from (``source``, ``layer``, ...) and its ``norm``
    direction: dict
    layers: list  #: the layers steered after
    max_tokens: int
    #: ``[{"prompt", "unsteered", "steered", "unsteered_token_ids", "steered_token_ids", "changed", "coefficient"}]``
    runs: list
    changed_fraction: float  #: the key figure: the fraction of runs whose steered text differs from the plain one


def _prompts(options: SteerOptions) -> tuple[str, ...]:
    return (options.prompt,) if isinstance(options.prompt, str) else tuple(options.prompt or ())


def _check(options: SteerOptions) -> None:
    check_outputs(options)
    if (options.direction is None) == (options.positive is None and options.negative is None):
        raise LazarusError("give either --direction DIR or both --positive FILE and --negative FILE")
    if options.direction is None and (options.positive is None or options.negative is None):
        raise LazarusError("--positive and --negative go together; give both files")
    if not _prompts(options):
        raise LazarusError("give at least one --prompt")


def _show(result: SteerResult, options: SteerOptions) -> None:
    from lazarus_introspect.report import Report

    report = Report(probe="steer", title=f"Steering — {options.model}", data=result_json(result))
    table = report.table(f"steering at layer(s) {', '.join(map(str, result.layers))} "
                         f"(direction norm {result.direction['norm']:.3g})",
                         ["prompt", "coef", "unsteered", "steered", "changed"])
    for run in result.runs:
        table.add_row(run["prompt"], run["coefficient"], run["unsteered"], run["steered"],
                      "yes" if run["changed"] else "")
    emit(report, options.json, options.report)


@operation(options=SteerOptions, metric="changed_fraction", name="steer", check=_check, show=_show, load=load)
def steer_probe(model, tokenizer, options: SteerOptions) -> SteerResult:
    """Steer generation with a direction; prints steered and unsteered text side by side."""
    import mlx.core as mx

    from lazarus_introspect.linear_probe import load_direction

    direction_dir, positive, negative, max_tokens = (options.direction, options.positive, options.negative,
                                                      options.max_tokens)
    count = activations.num_layers(model)
    result = header("steer", options, model)
    if direction_dir is not None:
        direction, meta = load_direction(direction_dir, options.toward)
        default_layer = meta.get("layer", count // 2)
        result["direction"] = {"source": str(direction_dir), "layer": meta.get("layer"), "toward": options.toward,
                               "labels": meta.get("labels")}
    else:
        default_layer = count // 2
    chosen = activations.check_layers(model, list(options.layer) or [default_layer])
    if direction_dir is None:
        assert positive is not None and negative is not None  # (_check: --direction, or both files)
        direction = mean_difference_direction(model, tokenizer, read_lines(positive, "--positive"),
                                              read_lines(negative, "--negative"), chosen[0])
        if cast(float, mx.linalg.norm(direction).item()) < 1e-8:  # (mlx's stub: item() may be complex)
            raise LazarusError(f"--positive {positive} and --negative {negative} give the same mean residual at "
                               f"layer {chosen[0]}, so the direction is zero; use prompt sets that differ")
        if options.normalize:
            direction = direction / mx.linalg.norm(direction)
        result["direction"] = {"source": "mean-difference", "positive": str(positive), "negative": str(negative),
                               "layer": chosen[0], "normalized": options.normalize}
    width = activations.hidden_size(model)
    if direction.ndim != 1 or direction.shape[0] != width:
        raise LazarusError(f"the direction has shape {tuple(direction.shape)}; it must be a vector of the model's "
                           "hidden size (was it saved from another model?)")
    result["direction"]["norm"] = mx.linalg.norm(direction.astype(mx.float32)).item()
    result["layers"] = chosen
    result["max_tokens"] = max_tokens
    runs = []
    for prompt in _prompts(options):
        plain = generate_text(model, tokenizer, prompt, max_tokens)
        for coefficient in options.coef:
            run = steer(model, tokenizer, prompt, direction, chosen, coefficient, max_tokens, plain)
            run["coefficient"] = coefficient
            runs.append(run)
    result["runs"] = runs
    return SteerResult(**result, changed_fraction=sum(run["changed"] for run in runs) / len(runs) if runs else 0.0)


#: the click command (derived from the operation), for code that imports it
steer_command = steer_probe.command("steer")
