"""Ablation: knock out one attention head, a whole attention layer or an MLP and see what changes.

``zero`` ablation replaces the component's output with zeros; ``mean`` ablation with its mean over
the prompt's tokens (or over the tokens of ``--mean-prompts FILE``), which keeps the activation
on-distribution. Heads are ablated through ``blocks.{L}.attn.hook_z`` (B, T, H, Dh), the per-head
output before ``o_proj``; whole attention through ``hook_attn_out`` and the MLP through
``hook_mlp_out``. The effect is measured on a target token's probability at the last position
(default: the model's own prediction) and, with ``--max-tokens N``, on the greedy answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    generate_text,
    load,
    parse_layers,
    read_lines,
    single_token,
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


@attrs.frozen
class Ablation:
    """One component to knock out: ``kind`` is ``head``, ``attn`` or ``mlp``; ``head`` for heads."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def hook(self) -> str:
        component = {"head": "z", "attn": "attn_out", "mlp": "mlp_out"}[self.kind]
        return activations.hook_name(component, self.layer)

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer} {self.kind}"


def component_means(model, prompts_ids: Sequence, names: Sequence[str]) -> dict:
    """Mean activation per hook over all tokens of ``prompts_ids`` (each (1, T)): ``{name: (last dims)}``."""
    import mlx.core as mx

    sums: dict[str, mx.array] = {}
    count = 0
    for ids in prompts_ids:
        _, cache = activations.run_with_cache(model, ids, names)
        for name in names:
            total = cache[name].astype(mx.float32).sum(axis=(0, 1))
            sums[name] = total if name not in sums else sums[name] + total
        count += ids.shape[0] * ids.shape[1]
    return {name: value / count for name, value in sums.items()}


def ablation_hook(ablation: Ablation, mode: str, mean=None, rows: Sequence[int] | None = None):
    """A hook function applying ``ablation`` (to batch ``rows`` only, or every row when None)."""
    import mlx.core as mx

    def hook(activation, _name=None):
        replacement = mx.zeros_like(activation) if mode == "zero" else mx.broadcast_to(
            mean.astype(activation.dtype), activation.shape)
        shape = [1] * activation.ndim
        if rows is not None:
            shape[0] = activation.shape[0]
        select = mx.ones(shape, dtype=mx.bool_)
        if rows is not None:
            select = (mx.arange(activation.shape[0]) == mx.array(list(rows))[:, None]).any(axis=0)
            select = select.reshape(shape)
        if ablation.head is not None:  # (B, T, H, Dh): only this head
            head_shape = [1] * activation.ndim
            head_shape[2] = activation.shape[2]
            select = select & (mx.arange(activation.shape[2]) == ablation.head).reshape(head_shape)
        return mx.where(select, replacement, activation)

    return hook


def ablation_effects(model, ids, ablations: Sequence[Ablation], target_id: int, *, mode: str = "zero",
                     means: dict | None = None, batch_size: int = 32) -> list[dict]:
    """Target-token probability and logit at the last position with each ablation applied alone.

    Ablations run in batches (one batch row per ablation). Returns one dict per ablation:
    ``{"component", "kind", "layer", "head", "prob", "logit", "top_token_id"}``.
    """
    import mlx.core as mx

    if mode == "mean" and means is None:
        means = component_means(model, [ids], sorted({a.hook for a in ablations}))
    results = []
    for start in range(0, len(ablations), batch_size):
        chunk = list(ablations[start:start + batch_size])
        batch = mx.broadcast_to(ids, (len(chunk), ids.shape[1]))
        hooks = [(a.hook, ablation_hook(a, mode, None if means is None else means[a.hook], rows=[row]))
                 for row, a in enumerate(chunk)]
        logits = activations.run_with_hooks(model, batch, hooks)[:, -1].astype(mx.float32)
        probs = mx.softmax(logits, axis=-1)
        mx.eval(probs)
        for row, ablation in enumerate(chunk):
            results.append({"component": ablation.label, "kind": ablation.kind, "layer": ablation.layer,
                            "head": ablation.head, "prob": probs[row, target_id].item(),
                            "logit": logits[row, target_id].item(),
                            "top_token_id": int(mx.argmax(logits[row]).item())})  # type: ignore[arg-type]  # mlx's stub: item() may be complex
    return results


def num_heads(model, layer: int = 0) -> int:
    """Attention heads of a block (read from the attention module, so it works for every family)."""
    attention = model.blocks[layer].self_attn
    for attr in ("num_heads", "n_heads"):
        if hasattr(attention, attr):
            return int(getattr(attention, attr))
    raise LazarusError("cannot tell how many attention heads this model has (no self_attn.num_heads)")


@attrs.define(kw_only=True)
class AblateOptions(ProbeOptions):
    """The options of ``lazarus introspect ablate`` (and the keys of a recipe stage)."""

    prompt: str | None = setting(None, "The prompt to run.", required=True, flags=("-p",))
    target: str | None = setting(None, "Token whose probability is measured (text or #ID; default: the model's "
                                       "prediction).", metavar="TOKEN")
    mode: str = setting("zero", "Replace with zeros, or with the mean activation.", choices=("zero", "mean"))
    what: tuple[str, ...] = setting(("heads", "attn", "mlp"), "Components to ablate; repeatable.",
                                    type=click.Choice(["heads", "attn", "mlp"]), shown_default="heads, attn, mlp")
    layers: str = setting("all", "Layers: all, 0,2,-1 or 1-3.")
    mean_prompts: str | None = setting(None, "With --mode mean: average over these prompts' tokens (one per line) "
                                             "instead of the prompt's.", metavar="FILE",
                                       type=click.Path(exists=True, dir_okay=False))
    max_tokens: int = setting(0, "Also generate this many tokens greedily with each ablation and compare the answers.",
                              type=click.IntRange(0), minimum=0)
    batch_size: int = setting(32, "Ablations run together in one batch.", type=click.IntRange(1), minimum=1)
    show: int = setting(40, "Table rows: the components with the largest effect (the JSON has them all).",
                        type=click.IntRange(1), minimum=1)


@attrs.frozen(kw_only=True)
class AblateResult(ProbeResult):
    """What ``ablate`` measured: the target's probability with each component knocked out alone."""

    prompt: str
    mode: str  #: zero or mean
    layers: list  #: the layers whose components were ablated
    target: dict  #: ``{"id", "token", "text"}`` of the measured token
    baseline_prob: float  #: the target's probability at the last position, nothing ablated
    baseline_logit: float
    #: one per component: ``{"component", "kind", "layer", "head", "prob", "logit", "top_token_id",
    #: "prob_change", "top_token"}`` (plus ``"answer"``, ``"answer_changed"`` with --max-tokens)
    effects: list
    baseline_answer: str | None = optional()  #: the greedy answer, nothing ablated (with --max-tokens)
    largest_component: str | None  #: the component whose ablation moves the target's probability most
    largest_change: float | None  #: the key figure: that change in probability (signed)
    note: str = shown_only(str)  #: how --target was tokenised, when it is several tokens


def _show(result: AblateResult, options: AblateOptions) -> None:
    import numpy as np

    from lazarus_introspect.report import Report, heatmap

    mode, effects, chosen, max_tokens = result.mode, result.effects, result.layers, options.max_tokens
    report = Report(probe="ablate", title=f"Ablation — {options.model}", data=result_json(result))
    if result.note:
        report.notes.append(result.note)
    report.notes.append(f"baseline p({result.target['token']!r}) = {result.baseline_prob:.4g}"
                        + (f"; baseline answer {result.baseline_answer!r}" if max_tokens else ""))
    columns = ["component", "prob", "change", "top token"] + (["answer", "changed"] if max_tokens else [])
    shown = sorted(effects, key=lambda e: -abs(e["prob_change"]))[:options.show]
    table = report.table(f"{mode}-ablation effect on p({result.target['token']!r})"
                         + (f" (largest {len(shown)} of {len(effects)})" if len(shown) < len(effects) else ""), columns)
    for effect in sorted(shown, key=lambda e: e["prob_change"]):
        cells = [effect["component"], effect["prob"], effect["prob_change"], repr(effect["top_token"])]
        if max_tokens:
            cells += [repr(effect["answer"]), "yes" if effect["answer_changed"] else ""]
        table.add_row(*cells)
    heads = [e for e in effects if e["kind"] == "head"]
    if heads:
        head_layers = sorted({e["layer"] for e in heads})
        width = max(e["head"] for e in heads) + 1
        grid = np.full((len(head_layers), width), np.nan)
        for e in heads:
            grid[head_layers.index(e["layer"]), e["head"]] = e["prob_change"]
        report.add_figure("heads", lambda grid=grid: heatmap(grid, title=f"{mode}-ablating one head: change in p(target)",
                                           xlabel="head", ylabel="layer", xticklabels=list(range(width)),
                                           yticklabels=head_layers, colorbar="probability change",
                                           center_zero=True), "Change in the target's probability per head")
    whole = [e for e in effects if e["kind"] != "head"]
    if whole:
        kinds_present = [k for k in ("attn", "mlp") if any(e["kind"] == k for e in whole)]
        grid = np.full((len(chosen), len(kinds_present)), np.nan)
        for e in whole:
            grid[chosen.index(e["layer"]), kinds_present.index(e["kind"])] = e["prob_change"]
        report.add_figure("layers", lambda grid=grid: heatmap(grid, title=f"{mode}-ablating attention / MLP: change in p(target)",
                                            xlabel="component", ylabel="layer", xticklabels=kinds_present,
                                            yticklabels=chosen, colorbar="probability change", center_zero=True),
                          "Change in the target's probability per layer component")
    emit(report, options.json, options.report)


@operation(options=AblateOptions, metric="largest_change", name="ablate", check=check_outputs, show=_show, load=load)
def ablate_probe(model, tokenizer, options: AblateOptions) -> AblateResult:
    """Zero / mean ablation of heads, attention and MLPs; effect on a token's probability and the answer."""
    import mlx.core as mx

    prompt, target, mode, kinds, max_tokens = (options.prompt, options.target, options.mode, options.what,
                                               options.max_tokens)
    assert prompt is not None  # a required setting
    ids = encode(tokenizer, prompt)
    chosen = parse_layers(options.layers, activations.num_layers(model))
    base_logits = model(ids)[:, -1].astype(mx.float32)
    base_probs = mx.softmax(base_logits, axis=-1)
    note = ""
    if target is None:
        target_id = int(mx.argmax(base_logits[0]).item())  # type: ignore[arg-type]  # mlx's stub: item() may be complex
    else:
        target_id, note = single_token(tokenizer, target, "--target")
    ablations = []
    for layer in chosen:
        if "heads" in kinds:
            ablations += [Ablation("head", layer, h) for h in range(num_heads(model, layer))]
        if "attn" in kinds:
            ablations.append(Ablation("attn", layer))
        if "mlp" in kinds:
            ablations.append(Ablation("mlp", layer))
    means = None
    if mode == "mean":
        sources = ([encode(tokenizer, line) for line in read_lines(options.mean_prompts, "--mean-prompts")]
                   if options.mean_prompts else [ids])
        means = component_means(model, sources, sorted({a.hook for a in ablations}))
    effects = ablation_effects(model, ids, ablations, target_id, mode=mode, means=means,
                               batch_size=options.batch_size)
    base_prob = base_probs[0, target_id].item()
    for effect in effects:
        effect["prob_change"] = effect["prob"] - base_prob
        effect["top_token"] = token_strings(tokenizer, [effect["top_token_id"]])[0]

    result = header("ablate", options, model)
    result.update({"prompt": prompt, "mode": mode, "layers": chosen,
                   "target": {"id": target_id, "token": token_strings(tokenizer, [target_id])[0],
                              "text": target},
                   "baseline_prob": base_prob, "baseline_logit": base_logits[0, target_id].item(),
                   "effects": effects})
    if max_tokens:
        baseline = generate_text(model, tokenizer, prompt, max_tokens)
        result["baseline_answer"] = baseline["text"]
        for ablation, effect in zip(ablations, effects, strict=True):
            hook = ablation_hook(ablation, mode, None if means is None else means[ablation.hook])
            effect["answer"] = generate_text(model, tokenizer, prompt, max_tokens, [(ablation.hook, hook)])["text"]
            effect["answer_changed"] = effect["answer"] != baseline["text"]
    largest = max(effects, key=lambda e: abs(e["prob_change"]), default=None)
    return AblateResult(**result, note=note, largest_component=None if largest is None else largest["component"],
                        largest_change=None if largest is None else largest["prob_change"])


#: the click command (derived from the operation), for code that imports it
ablate_command = ablate_probe.command("ablate")
