"""Attention patterns: who attends to whom, per layer and head.

Captures ``blocks.{L}.attn.hook_pattern`` (B, H, T, S) for a prompt and reports, per head, the
mean entropy of its attention rows (0 = always one token; ``ln(position + 1)`` = uniform), and
for the chosen query position(s) the top attended tokens with their weights. ``--report`` draws
one heatmap grid (query x key, one panel per head) per layer.
"""

from __future__ import annotations

import math

import click

from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    parse_layers,
    probe_options,
    resolve_positions,
    run_meta,
    token_strings,
)


def attention_patterns(model, ids, layers) -> dict:
    """``{layer: pattern (H, T, S) float32 numpy}`` for ``ids`` (1, T)."""
    names = {layer: activations.hook_name("pattern", layer) for layer in layers}
    _, cache = activations.run_with_cache(model, ids, list(names.values()))
    return {layer: activations.to_numpy(cache[name][0]) for layer, name in names.items()}


def row_entropy(pattern):
    """Entropy (nats) of every attention row of ``pattern`` (..., S)."""
    import numpy as np

    p = np.clip(pattern, 1e-12, 1.0)
    return -(pattern * np.log(p)).sum(axis=-1)


def summarise(patterns: dict, tokens: list[str], positions: list[int], top_k: int = 3) -> list[dict]:
    """Per layer and head: mean entropy, entropy at each chosen query, and its top attended tokens."""
    import numpy as np

    heads = []
    for layer, pattern in patterns.items():
        entropy = row_entropy(pattern)  # (H, T)
        for head in range(pattern.shape[0]):
            entry = {"layer": layer, "head": head, "mean_entropy": float(entropy[head].mean()), "queries": []}
            for position in positions:
                row = pattern[head, position, :position + 1]
                order = np.argsort(-row, kind="stable")[:top_k]
                entry["queries"].append({
                    "position": position,
                    "entropy": float(entropy[head, position]),
                    "max_entropy": math.log(position + 1),
                    "top": [{"position": int(k), "token": tokens[int(k)], "weight": float(row[k])} for k in order],
                })
            heads.append(entry)
    return heads


def _pattern_grid(pattern, tokens: list[str], layer: int):
    """One panel per head: the (query x key) attention pattern of ``layer``."""
    from lazarus_introspect.report import _pyplot, plot_text

    plt = _pyplot()
    heads = pattern.shape[0]
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    size = min(2.2 + 0.18 * len(tokens), 6)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    labels = [plot_text(t[:8]) for t in tokens]
    for index, ax in enumerate(axes.flat):
        if index >= heads:
            ax.axis("off")
            continue
        ax.imshow(pattern[index], vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
        ax.set_title(f"L{layer} H{index}", fontsize=9)
        if len(tokens) <= 40:
            ax.set_xticks(range(len(tokens)))
            ax.set_xticklabels(labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)))
            ax.set_yticklabels(labels, fontsize=6)
    fig.suptitle(f"attention patterns, layer {layer} (rows: query, columns: key)")
    fig.tight_layout()
    return fig


@click.command("attention")
@probe_options
@click.option("--prompt", "-p", required=True, help="The prompt to read.")
@click.option("--layers", default="all", show_default=True, help="Layers: all, 0,2,-1 or 1-3.")
@click.option("--position", "positions", type=int, multiple=True, default=(-1,), show_default=True,
              help="Query position(s) whose top attended tokens are listed; repeatable.")
@click.option("--top-k", type=click.IntRange(1, 50), default=3, show_default=True, help="Attended tokens to list.")
@click.option("--with-patterns", is_flag=True,
              help="Also put the full patterns (layer -> head x query x key) in the JSON.")
def attention_command(model_path, adapter_path, json_path, report_dir, prompt, layers, positions, top_k,
                      with_patterns):
    """Attention patterns per layer and head: entropy, top attended tokens, heatmaps."""
    import numpy as np

    from lazarus_introspect.report import Report, heatmap

    model, tokenizer, _ = load(model_path, adapter_path)
    ids = encode(tokenizer, prompt)
    tokens = token_strings(tokenizer, ids[0].tolist())
    chosen = parse_layers(layers, activations.num_layers(model))
    queries = resolve_positions(positions, len(tokens))
    patterns = attention_patterns(model, ids, chosen)
    heads = summarise(patterns, tokens, queries, top_k)
    result = run_meta("attention", model_path, adapter_path, model)
    result.update({"prompt": prompt, "tokens": tokens, "layers": chosen, "query_positions": queries, "heads": heads})
    if with_patterns:
        result["patterns"] = {str(layer): pattern for layer, pattern in patterns.items()}

    report = Report(probe="attention", title=f"Attention — {model_path}", data=result)
    for position in queries:
        table = report.table(f"query {position} ({tokens[position]!r}): top attended tokens",
                             ["layer", "head", "mean entropy", "entropy here", "top attended (weight)"])
        for head in heads:
            query = next(q for q in head["queries"] if q["position"] == position)
            top = ", ".join(f"{t['position']}:{t['token']!r} {t['weight']:.2f}" for t in query["top"])
            table.add_row(head["layer"], head["head"], head["mean_entropy"], query["entropy"], top)
    width = max(p.shape[0] for p in patterns.values())
    grid = np.full((len(chosen), width), np.nan)
    for head in heads:
        grid[chosen.index(head["layer"]), head["head"]] = head["mean_entropy"]
    report.add_figure("entropy", lambda: heatmap(grid, title="mean attention entropy per head (nats)", xlabel="head",
                                         ylabel="layer", xticklabels=list(range(width)), yticklabels=chosen,
                                         colorbar="entropy"), "Mean entropy of each head's attention rows")
    for layer, pattern in patterns.items():
        report.add_figure(f"pattern_layer{layer}",
                          lambda pattern=pattern, layer=layer: _pattern_grid(pattern, tokens, layer),
                          f"Attention patterns of layer {layer}")
    emit(report, json_path, report_dir)
