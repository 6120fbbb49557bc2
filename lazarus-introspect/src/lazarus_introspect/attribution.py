"""Direct logit attribution and attribution patching: which components matter, without N runs.

**Direct logit attribution** (``lazarus introspect dla``) splits the logit of a target token (or the
difference target - baseline) at one position into what each component wrote into the residual
stream: the embeddings, every attention layer (and every head, where the family exposes
``attn.hook_z``) and every MLP. The final norm is linear once its scale is frozen at the value it
had in this run, ``ln_final(x) = w * P(x) / sigma(x) + b`` (``P`` centres for LayerNorm, is the
identity for RMSNorm), and the head is linear before any soft-capping, so each component ``c``
contributes ``g . (w * P(c)) / sigma`` where ``g`` is the head's row for the target (minus the
baseline's). The parts sum to the logit up to the reported remainder: the final norm's bias, the
head's bias, and what is not linear (final soft-capping, rounding in the model's dtype).

**Attribution patching** (``lazarus introspect attribute``) estimates activation patching to first
order: for every layer x position of ``resid_pre``, ``attn_out`` and ``mlp_out``,
``grad(metric at the corrupted run) . (clean - corrupted activation)``, from one clean forward and
one corrupted forward and backward pass. ``--compare`` also runs real activation patching on the
same grid and reports how well the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import click

from lazarus.errors import LazarusError
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    continuation_logprob,
    emit,
    encode,
    load,
    parse_layers,
    probe_options,
    resolve_positions,
    run_meta,
    single_token,
    target_tokens,
    token_strings,
)

#: attribution-patching component -> the activation-patching component of ``patch`` it matches
PATCH_COMPONENTS = {"resid_pre": "resid", "attn_out": "attn_out", "mlp_out": "mlp_out"}


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
        mean_square = float(mx.mean(probe * probe).item())
        out = norm(probe[None])[0].astype(mx.float32) - bias
        weight = mx.where(probe != 0, out * probe * math.sqrt(mean_square + eps), weight)
    ones = norm(mx.ones((1, width), dtype=mx.float32))[0].astype(mx.float32) - bias
    centered = bool(mx.abs(ones).max().item() <= 1e-3 * max(mx.abs(weight).max().item(), 1e-12))
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


def _head_vectors(model, layer: int, z, attn_raw_input=None):
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
    components = [{"name": "embed", "kind": "embed", "layer": None, "head": None,
                   "contribution": float(contribution(at("blocks.0.hook_resid_pre")).item())}]
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
                    values = contribution(vectors).tolist()
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


# -- attribution patching -------------------------------------------------------------------------
def attribution_patching(model, clean_ids, corrupt_ids, metric: Callable, *,
                         components: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                         layers: Sequence[int] | None = None, positions: int | None = None) -> dict:
    """First-order estimate of activation patching for every component x layer x position.

    ``metric(logits) -> scalar mx.array`` (differentiable) is evaluated on the model's logits for
    ``clean_ids`` and ``corrupt_ids`` (same shape (B, S)). For each hook ``blocks.{L}.hook_{c}`` the
    estimate at position ``p`` is ``sum over batch and features of grad * (clean - corrupt)``,
    the gradient taken at the corrupted run: what patching the clean activation into every row at
    ``p`` would change the metric by, to first order. ``positions``: only the first that many
    positions are reported (e.g. the prompt, when the ids go on with an answer's tokens).

    Returns ``{"layers", "clean_metric", "corrupt_metric", "estimates": {component: [[per
    position] per layer]}, "scores": same / (clean - corrupt)}`` (scores: 1 = as clean).
    """
    import mlx.core as mx

    if clean_ids.shape != corrupt_ids.shape:
        raise LazarusError(f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one "
                           f"{corrupt_ids.shape[1]}; attribution patching needs prompts of the same length "
                           "(change a word for a word that is also one token)")
    count = activations.num_layers(model)
    layers = list(range(count)) if layers is None else activations.check_layers(model, layers, "--layers")
    names = [activations.hook_name(c, layer) for c in components for layer in layers]
    missing = [n for n in names if n not in set(model.hook_names())]
    if missing:
        raise LazarusError(f"the {getattr(model, 'family', 'loaded')} model does not fire {missing[0]}; "
                           f"use --component resid_pre (hooks it has: {', '.join(model.hook_names()[:4])} ...)")
    clean_logits, clean_cache = activations.run_with_cache(model, clean_ids, names)
    clean_metric = metric(clean_logits)
    mx.eval(clean_metric, clean_cache)

    shapes = {n: clean_cache[n].shape for n in names}

    def corrupted(deltas):
        captured = {}

        def add(name):
            def hook(activation, _name=None):
                captured[name] = activation
                return activation + deltas[name].astype(activation.dtype)
            return hook

        logits = activations.run_with_hooks(model, corrupt_ids, [(n, add(n)) for n in names])
        return metric(logits), captured

    zeros = {n: mx.zeros(shapes[n], dtype=mx.float32) for n in names}
    (corrupt_metric, corrupt_cache), grads = mx.value_and_grad(corrupted)(zeros)
    mx.eval(corrupt_metric, corrupt_cache, grads)
    clean_value, corrupt_value = float(clean_metric.item()), float(corrupt_metric.item())
    length = clean_ids.shape[1] if positions is None else positions
    denominator = clean_value - corrupt_value
    estimates, scores = {}, {}
    for component in components:
        estimates[component], scores[component] = [], []
        for layer in layers:
            name = activations.hook_name(component, layer)
            diff = clean_cache[name].astype(mx.float32) - corrupt_cache[name].astype(mx.float32)
            per_position = (grads[name] * diff).sum(axis=(0, 2))[:length].tolist()
            estimates[component].append(per_position)
            scores[component].append([v / denominator if denominator else float("nan") for v in per_position])
    return {"layers": layers, "clean_metric": clean_value, "corrupt_metric": corrupt_value,
            "estimates": estimates, "scores": scores}


def answer_metric(length: int, answer: Sequence[int], wrong: Sequence[int]) -> tuple[Callable, Callable]:
    """``(ids_for(prompt_ids), metric)`` for ``log p(answer) - log p(wrong)`` after a prompt of
    ``length`` tokens, as ``patch`` measures it (each summed over its tokens; the logit difference
    for one-token answers). Several-token answers run as two rows, the prompt followed by each
    answer (teacher-forced, right-padded), so one forward pass covers both."""
    import mlx.core as mx

    answer, wrong = list(answer), list(wrong)
    if len(answer) == 1 and len(wrong) == 1:
        def ids_for(prompt_ids):
            return prompt_ids

        def metric(logits):
            return (continuation_logprob(logits, length, answer) - continuation_logprob(logits, length, wrong))[0]

        return ids_for, metric
    width = length + max(len(answer), len(wrong)) - 1

    def ids_for(prompt_ids):
        rows = []
        for target in (answer, wrong):
            row = prompt_ids[0].tolist() + target[:-1]
            rows.append(row + [row[-1]] * (width - len(row)))  # padding after the answer is never read
        return mx.array(rows, dtype=mx.int32)

    def metric(logits):
        return (continuation_logprob(logits[:1], length, answer) - continuation_logprob(logits[1:], length, wrong))[0]

    return ids_for, metric


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of two equally long lists (None when either is constant)."""
    import numpy as np

    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def compare_with_patching(model, clean_ids, corrupted_ids, answer: Sequence[int], wrong: Sequence[int],
                          attribution: dict, components: Sequence[str]) -> dict:
    """Run activation patching (:func:`~lazarus_introspect.patching.patch_scan`) on the grid of
    ``attribution`` and return its scores and the correlation of the two, overall and per component."""
    from lazarus_introspect.patching import patch_scan

    scan = patch_scan(model, clean_ids, corrupted_ids, list(answer), list(wrong),
                      [PATCH_COMPONENTS[c] for c in components], attribution["layers"])
    patched = {c: scan["scores"][PATCH_COMPONENTS[c]] for c in components}
    flat_a, flat_p, per_component = [], [], {}
    for c in components:
        a = [v for row in attribution["scores"][c] for v in row]
        p = [v for row in patched[c] for v in row]
        per_component[c] = correlation(a, p)
        flat_a += a
        flat_p += p
    return {"patching_scores": patched, "correlation": correlation(flat_a, flat_p),
            "correlation_per_component": per_component,
            "max_abs_error": max((abs(a - p) for a, p in zip(flat_a, flat_p, strict=True)), default=0.0)}


# -- commands -------------------------------------------------------------------------------------
@click.command("dla")
@probe_options
@click.option("--prompt", "-p", required=True, help="The prompt to run.")
@click.option("--target", default=None, metavar="TOKEN",
              help="Token whose logit is split (text or #ID; default: the model's prediction).")
@click.option("--baseline", default=None, metavar="TOKEN",
              help="Split the logit difference target - baseline instead (text or #ID).")
@click.option("--position", type=int, default=-1, show_default=True,
              help="Token position whose next-token logit is split (negative counts from the end).")
@click.option("--heads/--no-heads", default=True, show_default=True,
              help="Also split each attention layer into its heads (where the family exposes attn.hook_z).")
@click.option("--show", type=click.IntRange(1), default=20, show_default=True,
              help="Components with the largest |contribution| to list in the table (the JSON has all).")
def dla_command(model_path, adapter_path, json_path, report_dir, prompt, target, baseline, position, heads, show):
    """Direct logit attribution: the target's logit split into embed, attention (heads) and MLP parts."""
    import mlx.core as mx

    model, tokenizer, _ = load(model_path, adapter_path)
    ids = encode(tokenizer, prompt)
    resolved = resolve_positions([position], ids.shape[1])[0]
    notes = []
    if target is None:
        target_id = int(mx.argmax(model(ids)[0, resolved]).item())
    else:
        target_id, note = single_token(tokenizer, target, "--target")
        notes += [note] if note else []
    baseline_id = None
    if baseline is not None:
        baseline_id, note = single_token(tokenizer, baseline, "--baseline")
        notes += [note] if note else []
        if baseline_id == target_id:
            raise LazarusError(f"--baseline {baseline!r} is the target token itself; choose another token")
    result = run_meta("dla", model_path, adapter_path, model)
    tokens = token_strings(tokenizer, ids[0].tolist())
    result.update({"prompt": prompt, "tokens": tokens,
                   "target": {"id": target_id, "token": token_strings(tokenizer, [target_id])[0]},
                   "baseline": None if baseline_id is None else
                   {"id": baseline_id, "token": token_strings(tokenizer, [baseline_id])[0]}})
    result.update(direct_logit_attribution(model, ids, target_id, resolved, baseline_id, heads=heads))
    result["notes"] = notes
    emit(build_dla_report(result, f"Direct logit attribution — {model_path}", show), json_path, report_dir)


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


@click.command("attribute")
@probe_options
@click.option("--clean", required=True, help="The clean prompt.")
@click.option("--corrupted", required=True, help="The corrupted prompt (same number of tokens).")
@click.option("--answer", required=True, metavar="TOKEN", help="The clean answer (text or #ID).")
@click.option("--wrong", required=True, metavar="TOKEN", help="The corrupted answer (text or #ID).")
@click.option("--component", "components", type=click.Choice(list(PATCH_COMPONENTS)), multiple=True,
              default=None, help="Components to attribute; repeatable (default: all the model exposes).")
@click.option("--layers", default="all", show_default=True, help="Layers: all, 0,2,-1 or 1-3.")
@click.option("--compare/--no-compare", default=False, show_default=True,
              help="Also run real activation patching on the same grid and report the correlation.")
def attribute_command(model_path, adapter_path, json_path, report_dir, clean, corrupted, answer, wrong,
                      components, layers, compare):
    """Attribution patching: grad x (clean - corrupted) for every layer x position, one backward pass."""
    model, tokenizer, _ = load(model_path, adapter_path)
    clean_ids, corrupted_ids = encode(tokenizer, clean, "clean prompt"), encode(tokenizer, corrupted, "corrupted prompt")
    answer_ids, answer_note = target_tokens(tokenizer, answer, "--answer")
    wrong_ids, wrong_note = target_tokens(tokenizer, wrong, "--wrong")
    if answer_ids == wrong_ids:
        raise LazarusError(f"--answer {answer!r} and --wrong {wrong!r} are the same tokens {answer_ids}; "
                           "give two different answers")
    if not components:
        components = tuple(PATCH_COMPONENTS) if has_branch_hooks(model) else ("resid_pre",)
    chosen = parse_layers(layers, activations.num_layers(model))
    if clean_ids.shape != corrupted_ids.shape:
        raise LazarusError(f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one "
                           f"{corrupted_ids.shape[1]}; attribution patching needs prompts of the same length "
                           "(change a word for a word that is also one token)")
    length = clean_ids.shape[1]
    ids_for, metric = answer_metric(length, answer_ids, wrong_ids)
    scan = attribution_patching(model, ids_for(clean_ids), ids_for(corrupted_ids), metric,
                                components=components, layers=chosen, positions=length)
    if abs(scan["clean_metric"] - scan["corrupt_metric"]) < 1e-6:
        raise LazarusError(f"the clean and corrupted prompts give the same logit difference "
                           f"({scan['clean_metric']:.4g}) between --answer and --wrong; choose prompts or "
                           "answers the model tells apart")
    clean_tokens = token_strings(tokenizer, clean_ids[0].tolist())
    corrupted_tokens = token_strings(tokenizer, corrupted_ids[0].tolist())
    result = run_meta("attribute", model_path, adapter_path, model)
    result.update({"clean": clean, "corrupted": corrupted, "clean_tokens": clean_tokens,
                   "corrupted_tokens": corrupted_tokens, "components": list(components),
                   "answer": {"text": answer, "ids": answer_ids, "tokens": token_strings(tokenizer, answer_ids)},
                   "wrong": {"text": wrong, "ids": wrong_ids, "tokens": token_strings(tokenizer, wrong_ids)},
                   "metric": "LD = log p(answer) - log p(wrong) (= logit difference for one-token answers); "
                             "score = grad(LD at corrupted) . (clean - corrupted) / (LD_clean - LD_corrupted)",
                   **scan})
    if compare:
        result.update(compare_with_patching(model, clean_ids, corrupted_ids, answer_ids, wrong_ids, scan,
                                            components))
    notes = [n for n in (answer_note, wrong_note) if n]
    notes.append(f"LD clean {scan['clean_metric']:.4g}, corrupted {scan['corrupt_metric']:.4g}")
    if compare:
        per = ", ".join(f"{c} {_fmt(v)}" for c, v in result["correlation_per_component"].items())
        notes.append(f"correlation with activation patching: {_fmt(result['correlation'])} overall ({per}); "
                     f"largest difference {result['max_abs_error']:.3g}")
    result["notes"] = notes
    emit(build_attribute_report(result, f"Attribution patching — {model_path}"), json_path, report_dir)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_attribute_report(result: dict, title: str):
    """One table and heatmap per component (and the patching heatmaps and a scatter with --compare)."""
    from lazarus_introspect.report import Report, heatmap, scatter_figure

    report = Report(probe="attribute", title=title, data=result)
    report.notes.extend(result.get("notes", []))
    labels = [f"{i}:{c}" if c == k else f"{i}:{c}/{k}"
              for i, (c, k) in enumerate(zip(result["clean_tokens"], result["corrupted_tokens"], strict=True))]
    for component in result["components"]:
        table = report.table(f"{component}: estimated restored fraction (attribution patching)", ["layer", *labels])
        for layer, row in zip(result["layers"], result["scores"][component], strict=True):
            table.add_row(layer, *[f"{v:.2f}" for v in row])
        report.add_figure(f"attribute_{component}", lambda component=component: heatmap(
            result["scores"][component], title=f"attribution patching {component} (1 = clean)",
            xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
            yticklabels=result["layers"], colorbar="estimated restored fraction", center_zero=True),
            f"grad x (clean - corrupted) for {component}, normalised by LD_clean - LD_corrupted")
        if "patching_scores" in result:
            report.add_figure(f"patch_{component}", lambda component=component: heatmap(
                result["patching_scores"][component], title=f"activation patching {component} (1 = clean)",
                xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
                yticklabels=result["layers"], colorbar="restored fraction", center_zero=True),
                f"Real activation patching of {component}, for comparison")
    if "patching_scores" in result:
        points = {c: ([v for row in result["patching_scores"][c] for v in row],
                      [v for row in result["scores"][c] for v in row]) for c in result["components"]}
        report.add_figure("attribute_vs_patch", lambda: scatter_figure(
            points, title=f"attribution vs activation patching (r = {_fmt(result['correlation'])})",
            xlabel="activation patching", ylabel="attribution patching"),
            "Each point is one layer x position x component")
    return report
