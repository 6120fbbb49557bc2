"""Logit lens: read each layer's residual stream as if it were the last one.

For every layer L and chosen position, ``unembed(ln_final(h_L))`` gives a distribution over the
vocabulary: its top-k tokens, the rank and probability of a tracked token, and the first layer
from which the model's final prediction is (and stays) the top token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import click

from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    resolve_positions,
    run_meta,
    target_tokens,
    token_strings,
    with_continuation,
)
from lazarus_introspect.probe_base import ProbeOptions, check_outputs


def layer_logits(model, ids, transform: Callable | None = None, positions: Sequence[int] | None = None):
    """Logits read from every layer: an array (num_layers, B, P, vocab), plus the model's logits (B, T, vocab).

    ``positions`` (resolved, non-negative) selects which token positions are read (None: all, P = T),
    so long prompts on large vocabularies never materialise logits they do not need.
    ``transform(layer, hidden)`` maps a residual (B, P, D) before the lens (the tuned lens uses
    it); without it this is the plain logit lens ``unembed(ln_final(h_L))``.
    """
    import mlx.core as mx

    count = activations.num_layers(model)
    names = [activations.hook_name("resid_post", layer) for layer in range(count)]
    logits, cache = activations.run_with_cache(model, ids, names)
    index = None if positions is None else mx.array(list(positions), dtype=mx.int32)
    per_layer = []
    for layer, name in enumerate(names):
        hidden = cache[name] if index is None else cache[name][:, index]
        if transform is not None:
            hidden = transform(layer, hidden)
        per_layer.append(activations.lens(model, hidden))
    return mx.stack(per_layer), logits


def read_layers(model, tokenizer, ids, *, positions: Sequence[int] = (-1,), top_k: int = 5,
                track_id: int | Sequence[int] | None = None, transform: Callable | None = None) -> dict:
    """The lens read-out for ``ids`` (1, T) at ``positions``: a JSON-ready dict.

    Returns ``{"tokens", "positions": [{"position", "input_token", "final_prediction",
    "emergence_layer", "first_top1_layer", "layers": [{"layer", "top": [{"id", "token", "prob"}],
    "final_prediction_prob", "final_prediction_rank", "track_prob", "track_rank",
    "track_logprob"}]}]}``. Ranks are 1-based (1 = top token); the emergence layer is the first
    layer from which the final prediction is the top token at every later layer.

    ``track_id``: a token id or a list of ids (a continuation of the prompt). ``track_prob`` and
    ``track_rank`` are those of its first token; ``track_logprob`` (at the last prompt position
    only) is the continuation's log-probability at that layer, summed over all its tokens.
    """
    import mlx.core as mx
    import numpy as np

    track_ids = None if track_id is None else [track_id] if isinstance(track_id, int) else list(track_id)
    track_id = None if track_ids is None else track_ids[0]
    continuation = _continuation_logprobs(model, ids, track_ids, transform) if track_ids else None

    tokens = token_strings(tokenizer, ids[0].tolist())
    resolved = resolve_positions(positions, ids.shape[1])
    lens_logits, logits = layer_logits(model, ids, transform, resolved)
    result: dict[str, Any] = {"tokens": tokens, "positions": []}
    count = lens_logits.shape[0]
    for column, position in enumerate(resolved):
        layer_probs = activations.to_numpy(mx.softmax(lens_logits[:, 0, column].astype(mx.float32), axis=-1))
        final_probs = activations.to_numpy(mx.softmax(logits[0, position].astype(mx.float32), axis=-1))
        final_id = int(np.argmax(final_probs))
        layers = []
        top1 = []
        for layer in range(count):
            probs = layer_probs[layer]
            order = np.argsort(-probs, kind="stable")
            top1.append(int(order[0]))
            entry = {
                "layer": layer,
                "top": [{"id": int(i), "token": token_strings(tokenizer, [i])[0], "prob": float(probs[i])}
                        for i in order[:top_k]],
                "final_prediction_prob": float(probs[final_id]),
                "final_prediction_rank": _rank(probs, final_id),
            }
            if track_id is not None:
                entry["track_prob"] = float(probs[track_id])
                entry["track_rank"] = _rank(probs, track_id)
                if position == ids.shape[1] - 1:
                    assert continuation is not None  # (track_ids is not empty: track_id is its first)
                    entry["track_logprob"] = continuation[layer]
            layers.append(entry)
        emergence = None
        for layer in range(count - 1, -1, -1):
            if top1[layer] != final_id:
                break
            emergence = layer
        result["positions"].append({
            "position": position,
            "input_token": tokens[position],
            "final_prediction": {"id": final_id, "token": token_strings(tokenizer, [final_id])[0],
                                 "prob": float(final_probs[final_id])},
            "emergence_layer": emergence,
            "first_top1_layer": next((layer for layer, t in enumerate(top1) if t == final_id), None),
            "layers": layers,
        })
    return result


def _continuation_logprobs(model, ids, track_ids: list[int], transform) -> list[float]:
    """Per layer, the lens log-probability of ``track_ids`` following ``ids`` (1, T), summed over its
    tokens (teacher-forced: the prompt plus all but the last tracked token runs once)."""
    import mlx.core as mx

    start = ids.shape[1]
    span = list(range(start - 1, start - 1 + len(track_ids)))
    lens_logits, _ = layer_logits(model, with_continuation(ids, track_ids), transform, span)  # (L, 1, n, V)
    logits = lens_logits[:, 0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = logprobs[:, mx.arange(len(track_ids)), mx.array(track_ids)]  # (L, n)
    return [float(v) for v in picked.sum(axis=-1).tolist()]


def track_info(tokenizer, text: str, ids: list[int]) -> dict:
    """The ``track`` entry of a lens result: text, ids, token strings; ``id``/``token`` of the first."""
    tokens = token_strings(tokenizer, ids)
    return {"text": text, "ids": ids, "tokens": tokens, "id": ids[0], "token": tokens[0]}


def _rank(probs, token_id: int) -> int:
    """1-based rank of ``token_id`` (ties count in its favour)."""
    return int((probs > probs[token_id]).sum()) + 1


def logit_lens(model, tokenizer, prompt: str, *, positions: Sequence[int] = (-1,), top_k: int = 5,
               track: str | None = None) -> dict:
    """Python API: the logit lens of ``prompt`` (see :func:`read_layers` for the returned dict)."""
    ids = encode(tokenizer, prompt)
    track_ids, note = (None, "")
    if track is not None:
        track_ids, note = target_tokens(tokenizer, track, "--track")
    result = read_layers(model, tokenizer, ids, positions=positions, top_k=top_k, track_id=track_ids)
    result["prompt"] = prompt
    result["top_k"] = top_k
    result["track"] = None if track is None or track_ids is None else track_info(tokenizer, track, track_ids)
    if note:
        result["notes"] = [f"{note}: log p is the whole target's, at the last position (the JSON's "
                           "track_rank and track_prob are its first token's)"]
    return result


def _rank_prob(rank: int, p: float) -> str:
    """``#1 0.854``: a rank and its probability in one cell."""
    return f"#{rank} {p:.3g}"


def _short_prob(p: float) -> str:
    """``.85``, ``.07``, ``1``: a probability in three characters, for the top-tokens column."""
    return "1" if p >= 0.995 else f"{p:.2f}"[1:]


def build_report(result: dict, probe: str, title: str):
    """Tables (one per position) and figures for a lens read-out (shared with the tuned lens)."""
    import numpy as np

    from lazarus_introspect.report import Report, heatmap, line_plot, plot_text

    report = Report(probe=probe, title=title, data=result)
    report.notes.extend(result.get("notes", []))
    track = result.get("track")
    tokens = track.get("tokens", [track["token"]]) if track else []
    multi = len(tokens) > 1
    # short column heads, so that a layer is one line at 80 columns; what they hold is said once
    report.notes.append("final: rank (#) and probability of the final prediction at each layer"
                        + ("; track: the tracked token's" if track and not multi else ""))
    for entry in result["positions"]:
        columns = ["layer", "top tokens", "final"]
        # a multi-token target: its whole log p (where known), not its first token's rank (often a space)
        has_logprob = multi and "track_logprob" in entry["layers"][0]
        if track:
            columns += ["log p"] if has_logprob else ["track"]
        table = report.table(
            f"position {entry['position']} ({entry['input_token']!r}) -> final prediction "
            f"{entry['final_prediction']['token']!r}, emerges at layer {entry['emergence_layer']}",
            columns)
        for layer in entry["layers"]:
            top = " ".join(f"{t['token']!r}{_short_prob(t['prob'])}" for t in layer["top"])
            cells = [layer["layer"], top, _rank_prob(layer["final_prediction_rank"], layer["final_prediction_prob"])]
            if track:
                cells += [layer["track_logprob"]] if has_logprob else [_rank_prob(layer["track_rank"], layer["track_prob"])]
            table.add_row(*cells)
    # heatmap: layers x positions, coloured by the top-1 probability, labelled with the token
    layers = len(result["positions"][0]["layers"]) if result["positions"] else 0
    if layers:
        probs = np.array([[e["layers"][layer]["top"][0]["prob"] for e in result["positions"]]
                          for layer in range(layers)])

        def top1_heatmap():
            fig = heatmap(probs, title="top-1 probability per layer (text: top token)", xlabel="position",
                          ylabel="layer",
                          xticklabels=[f"{e['position']}:{e['input_token']}" for e in result["positions"]],
                          yticklabels=list(range(layers)), colorbar="probability", vmin=0, vmax=1)
            ax = fig.axes[0]
            for layer in range(layers):
                for col, e in enumerate(result["positions"]):
                    ax.text(col, layer, plot_text(e["layers"][layer]["top"][0]["token"][:10]), ha="center",
                            va="center", fontsize=7, color="white" if probs[layer, col] < 0.5 else "black")
            return fig

        report.add_figure("top1_heatmap", top1_heatmap, "Top-1 token and its probability at every layer and position")
        series = {f"final pred @ {e['position']}": [layer["final_prediction_prob"] for layer in e["layers"]]
                  for e in result["positions"]}
        if track:
            for e in result["positions"]:
                if multi and "track_logprob" in e["layers"][0]:  # the whole target, not its first token
                    import math

                    series[f"p({track['text']!r}) @ {e['position']}"] = [math.exp(layer["track_logprob"])
                                                                         for layer in e["layers"]]
                else:
                    first = f"{track['text']!r}" if not multi else f"{track['text']!r} 1st token {tokens[0]!r}"
                    series[f"track {first} @ {e['position']}"] = [layer["track_prob"] for layer in e["layers"]]
        report.add_figure("probabilities", lambda: line_plot(series, title="probability across layers", xlabel="layer",
                                                     ylabel="probability"),
                          "Probability of the final prediction (and the tracked target) at each layer")
    return report


def _show(result: dict, options: LogitLensOptions) -> None:
    report = build_report(result, "logit-lens", f"Logit lens — {options.model}")
    emit(report, options.json, options.report)


@attrs.define(kw_only=True)
class LogitLensOptions(ProbeOptions):
    """The options of ``lazarus introspect logit-lens`` (and the keys of a recipe stage)."""

    prompt: str | None = setting(None, "The prompt to read.", required=True, flags=("-p",))
    position: tuple[int, ...] = setting((-1,), "Token position(s) to read (negative counts from the end); "
                                               "repeatable.")
    top_k: int = setting(5, "Tokens to show per layer.", type=click.IntRange(1, 100), minimum=1, maximum=100)
    track: str | None = setting(None, "Follow this token's rank and probability across layers (text, or #ID).",
                                metavar="TOKEN")


@operation(options=LogitLensOptions, metric="emergence_layer", name="logit-lens", check=check_outputs,
           show=_show, load=load)
def logit_lens_probe(model, tokenizer, options: LogitLensOptions) -> dict:
    """Logit lens: unembed(final_norm(h_L)) at every layer L for the chosen positions."""
    assert options.model is not None and options.prompt is not None  # required settings
    result = run_meta("logit-lens", options.model, options.adapter, model)
    result.update(logit_lens(model, tokenizer, options.prompt, positions=options.position, top_k=options.top_k,
                             track=options.track))
    # the key figure: from which layer the last read position's final prediction is the top token
    result["emergence_layer"] = result["positions"][-1]["emergence_layer"] if result["positions"] else None
    return result


#: the click command (derived from the operation), for code that imports it
logit_lens_command = logit_lens_probe.command("logit-lens")
