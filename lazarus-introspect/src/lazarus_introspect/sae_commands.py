"""``lazarus sae features`` / ``steer`` / ``ablate``: the SAE commands over :mod:`lazarus_introspect.sae`.

``features`` lists the top features per token of a prompt (and their top contexts in a dataset);
``steer`` and ``ablate`` add a feature's decoder direction, or remove the feature, at its hook
during generation, through the model's hooks like ``introspect steer``. ``lazarus sae train`` is
:mod:`lazarus_introspect.sae_train`.
"""

from __future__ import annotations

import click
import mlx.core as mx

from lazarus.errors import LazarusError
from lazarus_introspect.cli_common import emit, encode, generate_text, load, probe_options, run_meta
from lazarus_introspect.sae import (
    SAE,
    check_fits,
    feature_ablation_hook,
    feature_activations,
    feature_steering_hook,
    load_sae,
    sae_features,
    top_contexts,
)


def sae_option(command):
    return click.option("--sae", "sae_dir", required=True, type=click.Path(exists=True, file_okay=False),
                        metavar="DIR", help="SAE folder in SAELens layout (cfg.json + sae_weights.safetensors).")(command)


def _load_both(model_path, adapter_path, sae_dir):
    model, tokenizer, _ = load(model_path, adapter_path)
    sae = load_sae(sae_dir)
    check_fits(model, sae)
    return model, tokenizer, sae


def _check_feature(sae: SAE, feature: int) -> None:
    if not 0 <= feature < sae.d_sae:
        raise LazarusError(f"--feature {feature} is out of range; the SAE has {sae.d_sae} features (0..{sae.d_sae - 1})")


@click.command("features")
@probe_options
@sae_option
@click.option("--prompt", "-p", required=True, help="The prompt to read.")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True, help="Features to show per token.")
@click.option("--data", type=click.Path(exists=True), default=None, metavar="FILE",
              help="Text or JSONL dataset: also show where each listed feature fires most in it.")
@click.option("--max-records", type=click.IntRange(1), default=500, show_default=True,
              help="With --data: read at most this many records.")
@click.option("--contexts", type=click.IntRange(1, 50), default=3, show_default=True,
              help="With --data: top activating contexts per feature.")
def features_command(model_path, adapter_path, json_path, report_dir, sae_dir, prompt, top_k, data, max_records,
                     contexts):
    """Top SAE features per token of a prompt (and their top activating contexts in --data)."""
    from itertools import islice

    from lazarus_introspect.report import Report, heatmap

    model, tokenizer, sae = _load_both(model_path, adapter_path, sae_dir)
    result = run_meta("sae-features", model_path, adapter_path, model)
    result.update({"sae": str(sae_dir), "hook": sae.hook, "architecture": sae.architecture, "d_sae": sae.d_sae,
                   "prompt": prompt})
    result.update(sae_features(model, tokenizer, sae, prompt, top_k=top_k))
    listed = sorted({f["feature"] for t in result["per_token"] for f in t["features"]})
    if data is not None:
        from lazarus_introspect.sae_data import read_texts

        found = top_contexts(model, tokenizer, sae, listed, islice(read_texts(data), max_records),
                             per_feature=contexts)
        result["top_contexts"] = {str(f): rows for f, rows in found.items()}
        result["data"] = str(data)

    report = Report(probe="sae-features", title=f"SAE features — {sae.hook} — {model_path}", data=result)
    stats = result["stats"]
    report.notes.append(f"{sae.architecture} SAE, {sae.d_sae} features at {sae.hook}; on this prompt: explained "
                        f"variance {stats['explained_variance']:.3f}, L0 {stats['l0']:.1f}")
    table = report.table(f"top {top_k} features per token", ["position", "token", "features (activation)"])
    for entry in result["per_token"]:
        table.add_row(entry["position"], entry["token"],
                      ", ".join(f"#{f['feature']} {f['activation']:.3g}" for f in entry["features"]) or "-")
    if data is not None:
        ctx_table = report.table(f"where the listed features fire most in {data}",
                                 ["feature", "activation", "context (the token marked)"])
        for feature in listed:
            for row in result["top_contexts"][str(feature)]:
                ctx_table.add_row(f"#{feature}", row["activation"], row["context"])
    if listed:
        acts, _ = feature_activations(model, sae, encode(tokenizer, prompt))
        matrix = acts[0][:, mx.array(listed, dtype=mx.int32)].T.tolist()
        report.add_figure("sae_features", lambda: heatmap(
            matrix, title=f"feature activations at {sae.hook}", xlabel="token", ylabel="feature",
            xticklabels=[f"{i}:{t}" for i, t in enumerate(result["tokens"])],
            yticklabels=[f"#{f}" for f in listed], colorbar="activation"),
            "Activation of every listed feature at every token")
    emit(report, json_path, report_dir)


def _generation_runs(model, tokenizer, prompts, max_tokens, variants) -> list[dict]:
    runs = []
    for prompt in prompts:
        plain = generate_text(model, tokenizer, prompt, max_tokens)
        for label, hooks in variants:
            changed = generate_text(model, tokenizer, prompt, max_tokens, hooks)
            runs.append({"prompt": prompt, "setting": label, "unsteered": plain["text"], "steered": changed["text"],
                         "changed": plain["token_ids"] != changed["token_ids"]})
    return runs


def _generation_report(result, title, runs, json_path, report_dir):
    from lazarus_introspect.report import Report

    report = Report(probe=result["probe"], title=title, data=result)
    table = report.table(f"feature #{result['feature']} at {result['hook']}",
                         ["prompt", "setting", "plain", "with the feature changed", "changed"])
    for run in runs:
        table.add_row(run["prompt"], run["setting"], run["unsteered"], run["steered"], "yes" if run["changed"] else "")
    emit(report, json_path, report_dir)


@click.command("steer")
@probe_options
@sae_option
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Prompt(s); repeatable.")
@click.option("--feature", type=int, required=True, help="The feature whose decoder direction is added.")
@click.option("--coef", "coefficients", type=float, multiple=True, default=(4.0,), show_default=True,
              help="Coefficient(s) multiplying the direction (activation units); repeatable.")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="Tokens to generate.")
def steer_command(model_path, adapter_path, json_path, report_dir, sae_dir, prompts, feature, coefficients, max_tokens):
    """Generate with coef x a feature's decoder direction added at the SAE's hook (every position)."""
    model, tokenizer, sae = _load_both(model_path, adapter_path, sae_dir)
    _check_feature(sae, feature)
    variants = [(f"coef {c:g}", [(sae.hook, feature_steering_hook(sae, feature, c))]) for c in coefficients]
    runs = _generation_runs(model, tokenizer, prompts, max_tokens, variants)
    result = run_meta("sae-steer", model_path, adapter_path, model)
    result.update({"sae": str(sae_dir), "hook": sae.hook, "feature": feature, "coefficients": list(coefficients),
                   "max_tokens": max_tokens, "runs": runs})
    _generation_report(result, f"SAE steering — {model_path}", runs, json_path, report_dir)


@click.command("ablate")
@probe_options
@sae_option
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Prompt(s); repeatable.")
@click.option("--feature", type=int, required=True, help="The feature to remove.")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="Tokens to generate.")
def ablate_command(model_path, adapter_path, json_path, report_dir, sae_dir, prompts, feature, max_tokens):
    """Generate with a feature removed at the SAE's hook: x - f(x)[feature] x W_dec[feature]."""
    model, tokenizer, sae = _load_both(model_path, adapter_path, sae_dir)
    _check_feature(sae, feature)
    runs = _generation_runs(model, tokenizer, prompts, max_tokens,
                            [("ablated", [(sae.hook, feature_ablation_hook(sae, feature))])])
    result = run_meta("sae-ablate", model_path, adapter_path, model)
    result.update({"sae": str(sae_dir), "hook": sae.hook, "feature": feature, "max_tokens": max_tokens, "runs": runs})
    _generation_report(result, f"SAE feature ablation — {model_path}", runs, json_path, report_dir)
