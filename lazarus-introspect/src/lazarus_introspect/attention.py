"""Attention patterns: who attends to whom, per layer and head.

Captures ``blocks.{L}.attn.hook_pattern`` (B, H, T, S) for a prompt and reports, per head, the
mean entropy of its attention rows (0 = always one token; ``ln(position + 1)`` = uniform), and
for the chosen query position(s) the top attended tokens with their weights. ``--report`` draws
one heatmap grid (query x key, one panel per head) per layer.
"""

from __future__ import annotations

import math

import attrs
import click

from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    parse_layers,
    resolve_positions,
    token_strings,
)
from lazarus_introspect.probe_base import (
    ProbeOptions,
    ProbeResult,
    check_outputs,
    header,
    optional,
    result_json,
    shown_only,
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


@attrs.define(kw_only=True)
class AttentionOptions(ProbeOptions):
    """The options of ``lazarus introspect attention`` (and the keys of a recipe stage)."""

    prompt: str | None = setting(None, "The prompt to read.", required=True, flags=("-p",))
    layers: str = setting("all", "Layers: all, 0,2,-1 or 1-3.")
    position: tuple[int, ...] = setting((-1,), "Query position(s) whose top attended tokens are listed; repeatable.")
    top_k: int = setting(3, "Attended tokens to list.", type=click.IntRange(1, 50), minimum=1, maximum=50)
    with_patterns: bool = setting(False, "Also put the full patterns (layer -> head x query x key) in the JSON.")


@attrs.frozen(kw_only=True)
class AttentionResult(ProbeResult):
    """What ``attention`` read: per layer and head, the entropy of its rows and its top attended tokens."""

    prompt: str
    tokens: list  #: the prompt's tokens
    layers: list  #: the layers read
    query_positions: list  #: the query positions listed
    #: ``[{"layer", "head", "mean_entropy", "queries": [{"position", "entropy", "max_entropy", "top"}]}]``
    heads: list
    patterns: dict | None = optional()  #: ``{layer: head x query x key}`` with --with-patterns
    mean_entropy: float  #: the key figure: the mean over heads of their rows' mean entropy (nats)
    arrays: dict = shown_only()  #: ``{layer: pattern (H, T, S) numpy}``, for the report's heatmaps


def _show(result: AttentionResult, options: AttentionOptions) -> None:
    import numpy as np

    from lazarus_introspect.report import Report, heatmap

    tokens, chosen, heads, patterns = result.tokens, result.layers, result.heads, result.arrays
    report = Report(probe="attention", title=f"Attention — {options.model}", data=result_json(result))
    for position in result.query_positions:
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
    emit(report, options.json, options.report)


@operation(options=AttentionOptions, metric="mean_entropy", name="attention", check=check_outputs, show=_show,
           load=load)
def attention_probe(model, tokenizer, options: AttentionOptions) -> AttentionResult:
    """Attention patterns per layer and head: entropy, top attended tokens, heatmaps."""
    assert options.prompt is not None  # a required setting
    ids = encode(tokenizer, options.prompt)
    tokens = token_strings(tokenizer, ids[0].tolist())
    chosen = parse_layers(options.layers, activations.num_layers(model))
    queries = resolve_positions(options.position, len(tokens))
    patterns = attention_patterns(model, ids, chosen)
    heads = summarise(patterns, tokens, queries, options.top_k)
    result = header("attention", options, model)
    result.update({"prompt": options.prompt, "tokens": tokens, "layers": chosen, "query_positions": queries,
                   "heads": heads})
    if options.with_patterns:
        result["patterns"] = {str(layer): pattern.tolist() for layer, pattern in patterns.items()}
    mean_entropy = sum(head["mean_entropy"] for head in heads) / len(heads)
    return AttentionResult(**result, mean_entropy=mean_entropy, arrays=patterns)


#: the click command (derived from the operation), for code that imports it
attention_command = attention_probe.command("attention")
