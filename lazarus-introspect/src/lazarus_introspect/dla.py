"""Direct logit attribution: a token's logit split into what each component wrote.

``lazarus introspect dla`` splits the logit of a target token (or the difference target -
baseline) at one position into what each component wrote into the residual stream: the
embeddings, every attention layer (and every head, where the family exposes ``attn.hook_z``) and
every MLP. The final norm is linear once its scale is frozen at the value it had in this run,
``ln_final(x) = w * P(x) / sigma(x) + b`` (``P`` centres for LayerNorm, is the identity for
RMSNorm), and the head is linear before any soft-capping, so each component ``c`` contributes
``g . (w * P(c)) / sigma`` where ``g`` is the head's row for the target (minus the baseline's). The
parts sum to the logit up to the reported remainder: the final norm's bias, the head's bias, and
what is not linear (final soft-capping, rounding in the model's dtype).
"""

from __future__ import annotations

import math
from typing import Any, cast

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, encode, load, resolve_positions, single_token, token_strings
from lazarus_introspect.probe_base import ProbeOptions, ProbeResult, check_outputs, header, result_json


# -- the final norm and the head as linear maps ---------------------------------------------------
def frozen_norm(norm, x):
    """A norm of the form ``w * P(x) / sigma(x) + b`` as a linear map with its scale frozen at ``x``.

    ``x`` (N, D) are the inputs the norm saw in this run. Returns ``(weight (D,), bias (D,),
    centered, scale (N,))`` so that ``norm(x) = weight * P(x) * scale + bias`` where ``P`` subtracts
    the mean when ``centered`` (LayerNorm) and is the identity otherwise (RMSNorm, Gemma's
    ``1 + w`` variant). The weight and bias are read off the module by evaluating it on probe
    vectors, so any norm of this form works (first-party or mlx-lm's).
    """
    import mlx.core as mx

    width = x.shape[-1]
    eps = float(getattr(norm, "eps", 1e-6))
    bias = norm(mx.zeros((1, width), dtype=mx.float32))[0].astype(mx.float32)
    # +-1 alternating vectors have mean 0 and mean square 1 (one coordinate left 0 when D is odd)
    signs = mx.array([1.0 if i % 2 == 0 else -1.0 for i in range(width)], dtype=mx.float32)
    probes = [signs * (mx.arange(width) < width - 1)] if width % 2 else [signs]
    if width % 2:
        probes.append(mx.concatenate([mx.zeros((1,)), signs[: width - 1]]))
    weight = mx.zeros((width,), dtype=mx.float32)
    for probe in probes:
        mean_square = float(mx.mean(probe * probe).item())  # type: ignore[arg-type]  # mlx's stub: item() may be complex
        out = norm(probe[None])[0].astype(mx.float32) - bias
        weight = mx.where(probe != 0, out * probe * math.sqrt(mean_square + eps), weight)
    ones = norm(mx.ones((1, width), dtype=mx.float32))[0].astype(mx.float32) - bias
    centered = bool(cast(float, mx.abs(ones).max().item())
                    <= 1e-3 * max(cast(float, mx.abs(weight).max().item()), 1e-12))  # (mlx's stub: item() may be complex)
    x = x.astype(mx.float32)
    centred = x - x.mean(axis=-1, keepdims=True) if centered else x
    scale = mx.rsqrt(mx.mean(centred * centred, axis=-1) + eps)
    return weight, bias, centered, scale


def _centre(vectors, centered: bool):
    return vectors - vectors.mean(axis=-1, keepdims=True) if centered else vectors


def head_direction(model, target: int, baseline: int | None = None):
    """``(g, b)``: the head's linear map for ``logit[target] - logit[baseline]`` (or the target's
    logit) as a vector ``g`` (D,) and a bias ``b``, read at ``h = 0`` (where soft-capping has slope 1)."""
    import mlx.core as mx

    width = activations.hidden_size(model)

    def logit(h):
        logits = model.unembed(h)[0, 0].astype(mx.float32)
        return logits[target] - (logits[baseline] if baseline is not None else 0.0)

    value, grad = mx.value_and_grad(logit)(mx.zeros((1, 1, width), dtype=mx.float32))
    return grad[0, 0].astype(mx.float32), float(value.item())


def has_branch_hooks(model) -> bool:
    """Whether the model fires ``hook_attn_out`` / ``hook_mlp_out`` (first-party families do; the
    mlx-lm bridge fires only each block's input and output)."""
    names = set(model.hook_names())
    return "blocks.0.hook_attn_out" in names and "blocks.0.hook_mlp_out" in names


def _head_vectors(model, layer: int, z):
    """What each head of block ``layer`` adds to the residual at one position: (H, D) float32, from
    its ``hook_z`` slice ``z`` (H, Dh) through ``o_proj`` (its bias left out), Gemma-2's post-norm
    (scale frozen) and the residual multiplier. None when the block is not a first-party block."""
    import mlx.core as mx

    block = model.blocks[layer]
    attn = getattr(block, "self_attn", None)
    if attn is None or not hasattr(attn, "o_proj") or not hasattr(block, "residual_scale"):
        return None
    heads, head_dim = z.shape
    masked = (mx.eye(heads, dtype=z.dtype)[:, :, None] * z[None]).reshape(heads, heads * head_dim)
    dtype = z.dtype
    zero = attn.o_proj(mx.zeros((1, heads * head_dim), dtype=dtype))
    vectors = (attn.o_proj(masked) - zero).astype(mx.float32)
    if getattr(block, "sandwich", False):
        raw = attn.o_proj(z.reshape(1, heads * head_dim)).astype(mx.float32)
        weight, _, centered, scale = frozen_norm(block.post_attention_layernorm, raw)
        vectors = weight * _centre(vectors, centered) * scale[0]
    return vectors * float(block.residual_scale)


def direct_logit_attribution(model, ids, target: int, position: int = -1, baseline: int | None = None, *,
                             heads: bool = True) -> dict:
    """The target's logit (or ``target - baseline`` logit difference) at ``position`` split by component.

    ``ids``: (1, T). Returns ``{"position", "logit", "components": [{"name", "kind", "layer",
    "head", "contribution"}], "total", "remainder": {"final_norm_bias", "unembed_bias",
    "nonlinear"}, "heads": [[per head] per layer] | None, "head_remainder": [per layer] | None,
    "final_norm": {"centered", "scale"}}``. ``kind`` is ``embed``, ``attn``, ``mlp`` (or
    ``block`` for models whose blocks expose only their input and output) and ``head``;
    ``total`` sums the embed/attn/mlp/block parts (heads are a finer split of attn), and
    ``total + final_norm_bias + unembed_bias + nonlinear == logit``. ``head_remainder`` is each
    layer's attention minus its heads (``o_proj``'s bias).
    """
    import mlx.core as mx

    if ids.ndim != 2 or ids.shape[0] != 1:
        raise LazarusError(f"direct logit attribution takes one prompt (ids of shape (1, T)), got {ids.shape}")
    count = activations.num_layers(model)
    position = resolve_positions([position], ids.shape[1])[0]
    branches = has_branch_hooks(model)
    names = ["blocks.0.hook_resid_pre", *(f"blocks.{layer}.hook_resid_post" for layer in range(count))]
    hook_set = set(model.hook_names())
    with_heads = heads and branches and "blocks.0.attn.hook_z" in hook_set
    for layer in range(count):
        if branches:
            names += [activations.hook_name("attn_out", layer), activations.hook_name("mlp_out", layer)]
        else:
            names.append(activations.hook_name("resid_pre", layer))
        if with_heads:
            names.append(activations.hook_name("z", layer))
    logits, cache = activations.run_with_cache(model, ids, sorted(set(names)))

    def at(name):
        return cache[name][0, position].astype(mx.float32)

    final = at(f"blocks.{count - 1}.hook_resid_post")
    weight, norm_bias, centered, scale = frozen_norm(model.ln_final, final[None])
    g, unembed_bias = head_direction(model, target, baseline)
    direction = weight * g * scale[0]  # contribution(c) = direction . P(c)

    def contribution(vectors):
        return (_centre(vectors, centered) * direction).sum(axis=-1)

    row = logits[0, position].astype(mx.float32)
    logit = float((row[target] - (row[baseline] if baseline is not None else 0.0)).item())
    components: list[dict[str, Any]] = [{"name": "embed", "kind": "embed", "layer": None, "head": None,
                                         "contribution": float(contribution(at("blocks.0.hook_resid_pre")).item())}]
    head_table: list[list[float]] | None
    head_remainder: list[float] | None
    head_table, head_remainder = ([], []) if with_heads else (None, None)
    for layer in range(count):
        if branches:
            attn_value = float(contribution(at(activations.hook_name("attn_out", layer))).item())
            components.append({"name": f"L{layer} attn", "kind": "attn", "layer": layer, "head": None,
                               "contribution": attn_value})
            if with_heads:
                vectors = _head_vectors(model, layer, at(activations.hook_name("z", layer)))
                if vectors is None:
                    head_table = head_remainder = None
                    with_heads = False
                else:
                    assert head_table is not None and head_remainder is not None  # (with_heads)
                    values = cast("list[float]", contribution(vectors).tolist())
                    head_table.append(values)
                    head_remainder.append(attn_value - sum(values))
            components.append({"name": f"L{layer} mlp", "kind": "mlp", "layer": layer, "head": None,
                               "contribution": float(contribution(at(activations.hook_name("mlp_out", layer))).item())})
        else:
            delta = at(f"blocks.{layer}.hook_resid_post") - at(activations.hook_name("resid_pre", layer))
            components.append({"name": f"L{layer} block", "kind": "block", "layer": layer, "head": None,
                               "contribution": float(contribution(delta).item())})
    total = sum(c["contribution"] for c in components)
    norm_bias_term = float((g * norm_bias).sum().item())
    if head_table is not None:
        for layer, values in enumerate(head_table):
            components += [{"name": f"L{layer}H{h}", "kind": "head", "layer": layer, "head": h,
                            "contribution": v} for h, v in enumerate(values)]
    return {
        "position": position,
        "logit": logit,
        "components": components,
        "total": total,
        "remainder": {"final_norm_bias": norm_bias_term, "unembed_bias": unembed_bias,
                      "nonlinear": logit - total - norm_bias_term - unembed_bias},
        "heads": head_table,
        "head_remainder": head_remainder,
        "final_norm": {"centered": centered, "scale": float(scale[0].item())},
    }



def build_dla_report(result: dict, title: str, show: int = 20):
    """Tables (the split, the largest components) and figures (per layer bars, head heatmap)."""
    from lazarus_introspect.report import Report, bar_chart_figure, heatmap

    report = Report(probe="dla", title=title, data=result)
    report.notes.extend(result.get("notes", []))
    what = f"logit[{result['target']['token']!r}]"
    if result.get("baseline"):
        what += f" - logit[{result['baseline']['token']!r}]"
    remainder = result["remainder"]
    summary = report.table(f"{what} at position {result['position']} "
                           f"({result['tokens'][result['position']]!r}) = {result['logit']:.4g}", ["part", "value"])
    summary.add_row("sum of components", result["total"])
    summary.add_row("final norm bias", remainder["final_norm_bias"])
    summary.add_row("unembedding bias", remainder["unembed_bias"])
    summary.add_row("not linear (soft-capping, rounding)", remainder["nonlinear"])
    summary.add_row("actual", result["logit"])
    coarse = [c for c in result["components"] if c["kind"] != "head"]
    top = sorted(result["components"], key=lambda c: -abs(c["contribution"]))[:show]
    table = report.table(f"largest contributions to {what}", ["component", "contribution", "share of total"])
    for c in top:
        table.add_row(c["name"], c["contribution"],
                      f"{c['contribution'] / result['total']:+.0%}" if result["total"] else "-")
    report.add_figure("dla_components", lambda: bar_chart_figure(
        [c["name"] for c in coarse], [c["contribution"] for c in coarse],
        title=f"direct logit attribution to {what}", ylabel="contribution to the logit"),
        "What the embeddings, each attention layer and each MLP add to the logit")
    if result.get("heads"):
        report.add_figure("dla_heads", lambda: heatmap(
            result["heads"], title=f"per-head contribution to {what}", xlabel="head", ylabel="layer",
            xticklabels=list(range(len(result["heads"][0]))), yticklabels=list(range(len(result["heads"]))),
            colorbar="contribution", center_zero=True), "Each attention head's direct contribution")
    return report


# -- the probe ------------------------------------------------------------------------------------
@attrs.define(kw_only=True)
class DlaOptions(ProbeOptions):
    """The options of ``lazarus introspect dla`` (and the keys of a recipe stage)."""

    prompt: str | None = setting(None, "The prompt to run.", required=True, flags=("-p",))
    target: str | None = setting(None, "Token whose logit is split (text or #ID; default: the model's prediction).",
                                 metavar="TOKEN")
    baseline: str | None = setting(None, "Split the logit difference target - baseline instead (text or #ID).",
                                   metavar="TOKEN")
    position: int = setting(-1, "Token position whose next-token logit is split (negative counts from the end).")
    heads: bool = setting(True, "Also split each attention layer into its heads (where the family exposes "
                                "attn.hook_z).", off="--no-heads")
    show: int = setting(20, "Components with the largest |contribution| to list in the table (the JSON has all).",
                        type=click.IntRange(1), minimum=1)


@attrs.frozen(kw_only=True)
class DlaResult(ProbeResult):
    """The split of :func:`direct_logit_attribution` for one prompt (its fields, in its order)."""

    prompt: str
    tokens: list[str]
    target: dict  #: {"id", "token"}
    baseline: dict | None  #: {"id", "token"} with --baseline
    position: int  #: the resolved position
    logit: float  #: the split logit (or logit difference): the key figure
    components: list[dict]  #: {"name", "kind", "layer", "head", "contribution"}
    total: float
    remainder: dict  #: {"final_norm_bias", "unembed_bias", "nonlinear"}
    heads: list[list[float]] | None
    head_remainder: list[float] | None
    final_norm: dict
    notes: list[str]


def _show_dla(result: DlaResult, options: DlaOptions) -> None:
    emit(build_dla_report(result_json(result), f"Direct logit attribution — {options.model}", options.show),
         options.json, options.report)


@operation(options=DlaOptions, metric="logit", name="dla", check=check_outputs, show=_show_dla, load=load)
def dla_probe(model, tokenizer, options: DlaOptions) -> DlaResult:
    """Direct logit attribution: the target's logit split into embed, attention (heads) and MLP parts."""
    import mlx.core as mx

    assert options.prompt is not None  # a required setting
    ids = encode(tokenizer, options.prompt)
    resolved = resolve_positions([options.position], ids.shape[1])[0]
    notes = []
    if options.target is None:
        target_id = int(mx.argmax(model(ids)[0, resolved]).item())  # type: ignore[arg-type]  # mlx's stub: item() may be complex
    else:
        target_id, note = single_token(tokenizer, options.target, "--target")
        notes += [note] if note else []
    baseline_id = None
    if options.baseline is not None:
        baseline_id, note = single_token(tokenizer, options.baseline, "--baseline")
        notes += [note] if note else []
        if baseline_id == target_id:
            raise LazarusError(f"--baseline {options.baseline!r} is the target token itself; choose another token")
    split = direct_logit_attribution(model, ids, target_id, resolved, baseline_id, heads=options.heads)
    return DlaResult(**header("dla", options, model), prompt=options.prompt,
                     tokens=token_strings(tokenizer, ids[0].tolist()),
                     target={"id": target_id, "token": token_strings(tokenizer, [target_id])[0]},
                     baseline=None if baseline_id is None else
                     {"id": baseline_id, "token": token_strings(tokenizer, [baseline_id])[0]},
                     **split, notes=notes)


#: the click command (derived from the operation), for code that imports it
dla_command = dla_probe.command("dla")
