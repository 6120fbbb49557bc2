"""MLP neurons: which fire most on a set of prompts, and what each one writes into the vocabulary.

Captures the MLP hidden activation ``blocks.{L}.mlp.hook_post`` (B, T, I) (after the gate, before
``down_proj``) over every token of the prompts, ranks neurons by their largest activation and
shows the token where it peaked. What a neuron promotes is its output direction (its column of
``down_proj``, obtained by running a one-hot through the layer, so adapters and biases are
respected) read through the logit lens, ``unembed(ln_final(w_out))``: the tokens it pushes up
and the ones it pushes down.
"""

from __future__ import annotations

import click

from lazarus.errors import LazarusError
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    parse_layers,
    probe_options,
    read_lines,
    run_meta,
    token_strings,
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


@click.command("neurons")
@probe_options
@click.option("--prompt", "-p", "prompts", multiple=True, help="Prompt(s); repeatable.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="FILE", help="More prompts, one per line.")
@click.option("--layers", default="all", show_default=True, help="Layers: all, 0,2,-1 or 1-3.")
@click.option("--top-k", type=click.IntRange(1), default=10, show_default=True, help="Neurons to show per layer.")
@click.option("--promote-k", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Promoted / suppressed tokens to show per neuron.")
def neurons_command(model_path, adapter_path, json_path, report_dir, prompts, prompts_file, layers, top_k, promote_k):
    """Top-activating MLP neurons over prompts and the tokens each one promotes."""
    import numpy as np

    from lazarus_introspect.report import Report, heatmap

    texts = list(prompts) + (read_lines(prompts_file, "--prompts") if prompts_file else [])
    if not texts:
        raise LazarusError("give prompts with --prompt TEXT (repeatable) or --prompts FILE")
    model, tokenizer, _ = load(model_path, adapter_path)
    chosen = parse_layers(layers, activations.num_layers(model))
    per_layer = top_neurons(model, tokenizer, texts, chosen, top_k=top_k, promote_k=promote_k)
    result = run_meta("neurons", model_path, adapter_path, model)
    result.update({"prompts": texts, "layers": [{k: v for k, v in entry.items() if k != "peak_activations"}
                                                for entry in per_layer]})
    report = Report(probe="neurons", title=f"MLP neurons — {model_path}", data=result)
    for entry in per_layer:
        table = report.table(f"layer {entry['layer']}: top {len(entry['neurons'])} of {entry['num_neurons']} neurons "
                             f"over {entry['tokens']} tokens",
                             ["neuron", "max act", "mean act", "peak at", "promotes", "suppresses"])
        for n in entry["neurons"]:
            table.add_row(n["neuron"], n["max_activation"], n["mean_activation"],
                          f"prompt {n['peak']['prompt']} pos {n['peak']['position']} {n['peak']['token']!r}",
                          ", ".join(repr(t["token"]) for t in n["promotes"]),
                          ", ".join(repr(t["token"]) for t in n["suppresses"]))
    width = max(len(entry["peak_activations"]) for entry in per_layer)
    grid = np.full((len(per_layer), width), np.nan)
    for row, entry in enumerate(per_layer):
        grid[row, :len(entry["peak_activations"])] = np.sort(entry["peak_activations"])[::-1]
    report.add_figure("peak_activations", lambda: heatmap(
        grid, title="peak activation of each neuron, sorted (per layer)", xlabel="neuron rank", ylabel="layer",
        yticklabels=chosen, colorbar="max activation"), "How concentrated each layer's strongest activations are")
    emit(report, json_path, report_dir)
