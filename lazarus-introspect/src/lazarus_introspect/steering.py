"""Steering: add a direction to the residual stream during generation.

The direction comes from ``lazarus introspect probe --save DIR`` (``--direction DIR``) or is the
difference of the mean residuals of two prompt sets (``--positive FILE --negative FILE``, one
prompt per line, last token, at the steering layer). It is added, times ``--coef``, to
``blocks.{L}.hook_resid_post`` at every position of every forward pass while ``lazarus.generate``
runs, for each chosen layer. Coefficient 0 adds nothing and reproduces plain generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from lazarus.errors import LazarusError
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, generate_text, load, probe_options, read_lines, run_meta


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


@click.command("steer")
@probe_options
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Prompt(s) to generate from; repeatable.")
@click.option("--direction", "direction_dir", type=click.Path(exists=True, file_okay=False), default=None,
              metavar="DIR", help="A direction saved by `lazarus introspect probe --save DIR`.")
@click.option("--toward", default=None, metavar="LABEL",
              help="With --direction: steer toward this label's direction (default: first -> second label).")
@click.option("--positive", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Prompts (one per line) whose mean residual the direction points toward.")
@click.option("--negative", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Prompts (one per line) whose mean residual the direction points away from.")
@click.option("--layer", "layers", type=int, multiple=True,
              help="Layer(s) to steer after (repeatable; default: the probe's layer, or the middle layer).")
@click.option("--coef", "coefficients", type=float, multiple=True, default=(4.0,), show_default=True,
              help="Coefficient(s) multiplying the direction; repeatable (one column each).")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="Scale a mean-difference direction to unit norm (probe directions are unit already).")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="Tokens to generate.")
def steer_command(model_path, adapter_path, json_path, report_dir, prompts, direction_dir, toward, positive, negative,
                  layers, coefficients, normalize, max_tokens):
    """Steer generation with a direction; prints steered and unsteered text side by side."""
    import mlx.core as mx

    from lazarus_introspect.linear_probe import load_direction
    from lazarus_introspect.report import Report

    if (direction_dir is None) == (positive is None and negative is None):
        raise LazarusError("give either --direction DIR or both --positive FILE and --negative FILE")
    if direction_dir is None and (positive is None or negative is None):
        raise LazarusError("--positive and --negative go together; give both files")
    model, tokenizer, _ = load(model_path, adapter_path)
    count = activations.num_layers(model)
    result = run_meta("steer", model_path, adapter_path, model)
    if direction_dir is not None:
        direction, meta = load_direction(direction_dir, toward)
        default_layer = meta.get("layer", count // 2)
        result["direction"] = {"source": str(direction_dir), "layer": meta.get("layer"), "toward": toward,
                               "labels": meta.get("labels")}
    else:
        default_layer = count // 2
    chosen = activations.check_layers(model, layers or [default_layer])
    if direction_dir is None:
        direction = mean_difference_direction(model, tokenizer, read_lines(positive, "--positive"),
                                              read_lines(negative, "--negative"), chosen[0])
        if mx.linalg.norm(direction).item() < 1e-8:
            raise LazarusError(f"--positive {positive} and --negative {negative} give the same mean residual at "
                               f"layer {chosen[0]}, so the direction is zero; use prompt sets that differ")
        if normalize:
            direction = direction / mx.linalg.norm(direction)
        result["direction"] = {"source": "mean-difference", "positive": str(positive), "negative": str(negative),
                               "layer": chosen[0], "normalized": normalize}
    width = activations.hidden_size(model)
    if direction.ndim != 1 or direction.shape[0] != width:
        raise LazarusError(f"the direction has shape {tuple(direction.shape)}; it must be a vector of the model's "
                           "hidden size (was it saved from another model?)")
    result["direction"]["norm"] = mx.linalg.norm(direction.astype(mx.float32)).item()
    result["layers"] = chosen
    result["max_tokens"] = max_tokens
    runs = []
    for prompt in prompts:
        plain = generate_text(model, tokenizer, prompt, max_tokens)
        for coefficient in coefficients:
            run = steer(model, tokenizer, prompt, direction, chosen, coefficient, max_tokens, plain)
            run["coefficient"] = coefficient
            runs.append(run)
    result["runs"] = runs

    report = Report(probe="steer", title=f"Steering — {model_path}", data=result)
    table = report.table(f"steering at layer(s) {', '.join(map(str, chosen))} "
                         f"(direction norm {result['direction']['norm']:.3g})",
                         ["prompt", "coef", "unsteered", "steered", "changed"])
    for run in runs:
        table.add_row(run["prompt"], run["coefficient"], run["unsteered"], run["steered"],
                      "yes" if run["changed"] else "")
    emit(report, json_path, report_dir)
