"""MLP neurons: which fire most on a set of prompts, and what each one writes into the vocabulary.

Captures the MLP hidden activation ``blocks.{L}.mlp.hook_post`` (B, T, I) (after the gate, before
``down_proj``) over every token of the prompts, ranks neurons by their largest activation and
shows the token where it peaked. What a neuron promotes is its output direction (its column of
``down_proj``, obtained by running a one-hot through the layer, so adapters and biases are
respected) read through the logit lens, ``unembed(ln_final(w_out))``: the tokens it pushes up
and the ones it pushes down.
"""

from __future__ import annotations

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, encode, load, parse_layers, read_lines, token_strings
from lazarus_introspect.probe_base import (
    ProbeOptions,
    ProbeResult,
    check_outputs,
    header,
    result_json,
    shown_only,
)


def neuron_activations(model, prompt_ids, layers):
    """``({layer: acts (N, I) float32 numpy}, where)`` over all prompts' tokens, one forward pass per prompt.

    ``where`` lists ``(prompt index, position)`` for each of the N rows.
    """
    import numpy as np

    names = {layer: activations.hook_name("mlp_post", layer) for layer in layers}
    rows: dict[int, list] = {layer: [] for layer in layers}
    where = []
    for index, ids in enumerate(prompt_ids):
        _, cache = activations.run_with_cache(model, ids, list(names.values()))
        for layer, name in names.items():
            rows[layer].append(activations.to_numpy(cache[name][0]))
        where += [(index, position) for position in range(ids.shape[1])]
    return {layer: np.concatenate(chunks) for layer, chunks in rows.items()}, where


def output_directions(model, layer: int, neurons, width: int):
    """Each neuron's output direction (K, D): ``down_proj(e_n) - down_proj(0)``; ``width`` = I."""
    import mlx.core as mx

    down = model.blocks[layer].mlp.down_proj
    onehot = (mx.arange(width)[None] == mx.array(list(neurons))[:, None]).astype(mx.float32)
    return (down(onehot) - down(mx.zeros((1, width)))).astype(mx.float32)


def promoted_tokens(model, directions, top_k: int = 5):
    """``(promoted ids (K, top_k), their logits, suppressed ids, their logits)`` for directions (K, D)."""
    import numpy as np

    logits = activations.to_numpy(activations.lens(model, directions))
    order = np.argsort(-logits, axis=1, kind="stable")
    top, bottom = order[:, :top_k], order[:, ::-1][:, :top_k]
    return top, np.take_along_axis(logits, top, 1), bottom, np.take_along_axis(logits, bottom, 1)


def top_neurons(model, tokenizer, prompts: list[str], layers: list[int], *, top_k: int = 10,
                promote_k: int = 5) -> list[dict]:
    """Per layer, the ``top_k`` neurons by maximum activation over the prompts, with what they promote."""
    import numpy as np

    prompt_ids = [encode(tokenizer, p) for p in prompts]
    prompt_tokens = [token_strings(tokenizer, ids[0].tolist()) for ids in prompt_ids]
    per_layer, where = neuron_activations(model, prompt_ids, layers)
    out = []
    for layer in layers:
        acts = per_layer[layer]
        peak = acts.max(axis=0)
        chosen = np.argsort(-peak, kind="stable")[:top_k]
        promoted, promoted_logits, suppressed, suppressed_logits = promoted_tokens(
            model, output_directions(model, layer, chosen.tolist(), acts.shape[1]), promote_k)
        neurons = []
        for rank, neuron in enumerate(chosen):
            row = int(np.argmax(acts[:, neuron]))
            prompt_index, position = where[row]
            neurons.append({
                "neuron": int(neuron),
                "max_activation": float(peak[neuron]),
                "mean_activation": float(acts[:, neuron].mean()),
                "peak": {"prompt": prompt_index, "position": position, "token": prompt_tokens[prompt_index][position]},
                "promotes": [{"id": int(t), "token": token_strings(tokenizer, [t])[0], "logit": float(v)}
                             for t, v in zip(promoted[rank], promoted_logits[rank], strict=True)],
                "suppresses": [{"id": int(t), "token": token_strings(tokenizer, [t])[0], "logit": float(v)}
                               for t, v in zip(suppressed[rank], suppressed_logits[rank], strict=True)],
            })
        out.append({"layer": layer, "num_neurons": int(acts.shape[1]), "tokens": int(acts.shape[0]),
                    "neurons": neurons, "peak_activations": peak})
    return out


@attrs.define(kw_only=True)
class NeuronsOptions(ProbeOptions):
    """The options of ``lazarus introspect neurons`` (and the keys of a recipe stage)."""

    prompt: tuple[str, ...] = setting((), "Prompt(s); repeatable.", flags=("-p",))
    prompts: str | None = setting(None, "More prompts, one per line.", metavar="FILE",
                                  type=click.Path(exists=True, dir_okay=False))
    layers: str = setting("all", "Layers: all, 0,2,-1 or 1-3.")
    top_k: int = setting(10, "Neurons to show per layer.", type=click.IntRange(1), minimum=1)
    promote_k: int = setting(5, "Promoted / suppressed tokens to show per neuron.", type=click.IntRange(1, 50),
                             minimum=1, maximum=50)


@attrs.frozen(kw_only=True)
class NeuronsResult(ProbeResult):
    """Per chosen layer (:func:`top_neurons` without the peak activations), and the largest activation."""

    prompts: list[str]
    layers: list[dict]  #: {"layer", "num_neurons", "tokens", "neurons": [{"neuron", "max_activation", ...}]}
    max_activation: float  #: the largest activation of any neuron on any token (the key figure)
    peak_activations: list = shown_only(list)  #: per layer, every neuron's peak (numpy), for the figure


def _texts(options: NeuronsOptions) -> list[str]:
    """The prompts of ``--prompt`` and ``--prompts FILE``; none is a LazarusError."""
    texts = list(options.prompt) + (read_lines(options.prompts, "--prompts") if options.prompts else [])
    if not texts:
        raise LazarusError("give prompts with --prompt TEXT (repeatable) or --prompts FILE")
    return texts


def _check(options: NeuronsOptions) -> None:
    check_outputs(options)
    _texts(options)


def _show(result: NeuronsResult, options: NeuronsOptions) -> None:
    import numpy as np

    from lazarus_introspect.report import Report, heatmap

    report = Report(probe="neurons", title=f"MLP neurons — {options.model}", data=result_json(result))
    for entry in result.layers:
        table = report.table(f"layer {entry['layer']}: top {len(entry['neurons'])} of {entry['num_neurons']} neurons "
                             f"over {entry['tokens']} tokens",
                             ["neuron", "max act", "mean act", "peak at", "promotes", "suppresses"])
        for n in entry["neurons"]:
            table.add_row(n["neuron"], n["max_activation"], n["mean_activation"],
                          f"prompt {n['peak']['prompt']} pos {n['peak']['position']} {n['peak']['token']!r}",
                          ", ".join(repr(t["token"]) for t in n["promotes"]),
                          ", ".join(repr(t["token"]) for t in n["suppresses"]))
    peaks = result.peak_activations
    width = max(len(peak) for peak in peaks)
    grid = np.full((len(peaks), width), np.nan)
    for row, peak in enumerate(peaks):
        grid[row, :len(peak)] = np.sort(peak)[::-1]
    report.add_figure("peak_activations", lambda: heatmap(
        grid, title="peak activation of each neuron, sorted (per layer)", xlabel="neuron rank", ylabel="layer",
        yticklabels=[entry["layer"] for entry in result.layers], colorbar="max activation"),
        "How concentrated each layer's strongest activations are")
    emit(report, options.json, options.report)


@operation(options=NeuronsOptions, metric="max_activation", name="neurons", check=_check, show=_show, load=load)
def neurons_probe(model, tokenizer, options: NeuronsOptions) -> NeuronsResult:
    """Top-activating MLP neurons over prompts and the tokens each one promotes."""
    texts = _texts(options)
    chosen = parse_layers(options.layers, activations.num_layers(model))
    per_layer = top_neurons(model, tokenizer, texts, chosen, top_k=options.top_k, promote_k=options.promote_k)
    return NeuronsResult(**header("neurons", options, model), prompts=texts,
                         layers=[{k: v for k, v in entry.items() if k != "peak_activations"} for entry in per_layer],
                         max_activation=max(float(entry["peak_activations"].max()) for entry in per_layer),
                         peak_activations=[entry["peak_activations"] for entry in per_layer])


#: the click command (derived from the operation), for code that imports it
neurons_command = neurons_probe.command("neurons")
