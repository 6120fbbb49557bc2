"""Activation patching: which activations carry the difference between a clean and a corrupted prompt?

Run the clean prompt and cache its activations; then run the corrupted prompt with one
activation (a component at one layer and one position) replaced by its clean value, and measure
how much of the clean behaviour comes back. The metric is the logit difference of two answer
tokens at the last position, ``logit[answer] - logit[wrong]``, normalised so that 1 means "as
clean" and 0 means "as corrupted". Components: ``resid`` (``hook_resid_pre``), ``attn_out``,
``mlp_out``. All positions of one layer run as one batch (row i patches position i).
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from lazarus.errors import LazarusError
from lazarus_introspect import activations
from lazarus_introspect.cli_common import (
    emit,
    encode,
    load,
    probe_options,
    run_meta,
    single_token,
    token_strings,
)

COMPONENTS = {"resid": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out"}


def logit_diff(logits, answer_id: int, wrong_id: int):
    """``logit[answer] - logit[wrong]`` at the last position, per batch row (B,)."""
    import mlx.core as mx

    last = logits[:, -1].astype(mx.float32)
    return last[:, answer_id] - last[:, wrong_id]


def run_patched(model, corrupted_ids, clean_activation, name: str, positions: Sequence[int] | None = None):
    """Logits of the corrupted run with hook ``name`` set to ``clean_activation`` at ``positions`` (all if None)."""
    return activations.run_with_hooks(
        model, corrupted_ids, [(name, activations.replace_positions(clean_activation, positions))])


def patch_layer_positions(model, corrupted_ids, clean_activation, name: str):
    """Logits (T, T', vocab) of T corrupted runs in one batch; row i has position i patched from clean."""
    import mlx.core as mx

    length = corrupted_ids.shape[1]
    batch = mx.broadcast_to(corrupted_ids, (length, length))
    eye = mx.eye(length, dtype=mx.bool_)[:, :, None]  # row i, position i

    def hook(activation, _name=None):
        return mx.where(eye, clean_activation.astype(activation.dtype), activation)

    return activations.run_with_hooks(model, batch, [(name, hook)])


def patch_scan(model, clean_ids, corrupted_ids, answer_id: int, wrong_id: int,
               components: Sequence[str] = ("resid", "attn_out", "mlp_out"), layers: Sequence[int] | None = None) -> dict:
    """Patch every (component, layer, position); returns normalised scores and the raw logit differences.

    ``{"clean_logit_diff", "corrupted_logit_diff", "scores": {component: [[score per position] per
    layer]}, "logit_diffs": {...same shape...}}``. A score of 1 restores the clean logit difference.
    """
    import mlx.core as mx

    if clean_ids.shape != corrupted_ids.shape:
        raise LazarusError(f"the clean prompt has {clean_ids.shape[1]} tokens and the corrupted one "
                           f"{corrupted_ids.shape[1]}; patching needs prompts of the same length "
                           "(change a word for a word that is also one token)")
    count = activations.num_layers(model)
    layers = list(range(count)) if layers is None else list(layers)
    names = {c: [activations.hook_name(COMPONENTS[c], layer) for layer in layers] for c in components}
    clean_logits, cache = activations.run_with_cache(model, clean_ids, [n for ns in names.values() for n in ns])
    corrupted_logits = model(corrupted_ids)
    clean_diff = logit_diff(clean_logits, answer_id, wrong_id).item()
    corrupted_diff = logit_diff(corrupted_logits, answer_id, wrong_id).item()
    denominator = clean_diff - corrupted_diff
    if abs(denominator) < 1e-6:
        raise LazarusError(f"the clean and corrupted prompts give the same logit difference ({clean_diff:.4g}) "
                           "between --answer and --wrong; choose prompts or answers the model tells apart")
    scores, diffs = {}, {}
    for component in components:
        scores[component], diffs[component] = [], []
        for name in names[component]:
            patched = patch_layer_positions(model, corrupted_ids, cache[name], name)
            row = logit_diff(patched, answer_id, wrong_id)
            mx.eval(row)
            values = row.tolist()
            diffs[component].append(values)
            scores[component].append([(v - corrupted_diff) / denominator for v in values])
    return {"layers": layers, "clean_logit_diff": clean_diff, "corrupted_logit_diff": corrupted_diff,
            "scores": scores, "logit_diffs": diffs}


@click.command("patch")
@probe_options
@click.option("--clean", required=True, help="The clean prompt.")
@click.option("--corrupted", required=True, help="The corrupted prompt (same number of tokens).")
@click.option("--answer", required=True, metavar="TOKEN", help="The clean answer token (text or #ID).")
@click.option("--wrong", required=True, metavar="TOKEN", help="The corrupted answer token (text or #ID).")
@click.option("--component", "components", type=click.Choice(list(COMPONENTS)), multiple=True,
              default=tuple(COMPONENTS), show_default=True, help="Components to patch; repeatable.")
def patch_command(model_path, adapter_path, json_path, report_dir, clean, corrupted, answer, wrong, components):
    """Activation patching clean -> corrupted over layers x positions; 1 = clean, 0 = corrupted."""
    from lazarus_introspect.report import Report, heatmap

    model, tokenizer, _ = load(model_path, adapter_path)
    clean_ids, corrupted_ids = encode(tokenizer, clean, "clean prompt"), encode(tokenizer, corrupted, "corrupted prompt")
    answer_id, answer_note = single_token(tokenizer, answer, "--answer")
    wrong_id, wrong_note = single_token(tokenizer, wrong, "--wrong")
    if answer_id == wrong_id:
        raise LazarusError(f"--answer and --wrong are the same token {answer_id}; give two different tokens")
    scan = patch_scan(model, clean_ids, corrupted_ids, answer_id, wrong_id, components)
    clean_tokens = token_strings(tokenizer, clean_ids[0].tolist())
    corrupted_tokens = token_strings(tokenizer, corrupted_ids[0].tolist())
    result = run_meta("patch", model_path, adapter_path, model)
    result.update({"clean": clean, "corrupted": corrupted, "clean_tokens": clean_tokens,
                   "corrupted_tokens": corrupted_tokens,
                   "answer": {"text": answer, "id": answer_id, "token": token_strings(tokenizer, [answer_id])[0]},
                   "wrong": {"text": wrong, "id": wrong_id, "token": token_strings(tokenizer, [wrong_id])[0]},
                   "metric": "(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted), LD = logit[answer] - logit[wrong]",
                   **scan})
    report = Report(probe="patch", title=f"Activation patching — {model_path}", data=result)
    report.notes.extend(n for n in (answer_note, wrong_note) if n)
    report.notes.append(f"clean logit diff {scan['clean_logit_diff']:.4g}, corrupted {scan['corrupted_logit_diff']:.4g}")
    labels = [f"{i}:{c}" if c == k else f"{i}:{c}/{k}" for i, (c, k) in enumerate(zip(clean_tokens, corrupted_tokens, strict=True))]
    for component in components:
        table = report.table(f"{component}: restored fraction of the clean logit difference", ["layer", *labels])
        for layer, row in zip(scan["layers"], scan["scores"][component], strict=True):
            table.add_row(layer, *[f"{v:.2f}" for v in row])
        report.add_figure(f"patch_{component}", lambda component=component: heatmap(
            scan["scores"][component], title=f"patching {component} (1 = clean, 0 = corrupted)",
            xlabel="position (clean/corrupted token)", ylabel="layer", xticklabels=labels,
            yticklabels=scan["layers"], colorbar="restored fraction", center_zero=True),
            f"Patching {component} from the clean run, one layer and position at a time")
    emit(report, json_path, report_dir)
