"""``lazarus models``: create random checkpoints and describe checkpoints.

Imports only click at top level; mlx and model code load inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from lazarus.options import SEED


@click.group()
def models():
    """Create random checkpoints (any installed family) and describe checkpoints."""


@models.command("create")
@click.option("--family", "-f", required=True, metavar="NAME",
              help="Model family, e.g. llama, mistral, qwen2, gemma, gemma2, granite (`lazarus plugins list`).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write (config.json, model.safetensors, tokenizer, lazarus.json).")
@click.option("--size", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True,
              help="tiny: 2 layers, hidden 64 (tests); small: ~75M parameters (llama only; benchmarks).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed of the weights.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="Dtype of the stored weights.")
@click.option("--vocab-size", type=click.IntRange(min=8, max=1_000_000), default=None,
              help="Vocabulary size [default: 512 for tiny, 8192 for small]; the tokenizer is trained to fit.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists and is not empty.")
def create(family, output, size, seed, dtype, vocab_size, force):
    """Write a randomly initialised checkpoint of FAMILY in Hugging Face layout.

    The result loads with `lazarus.load_model(OUTPUT)` (and with mlx-lm / transformers); use it
    to try commands, in tests and for benchmarks. Example:

        lazarus models create --family llama --output models/tiny-llama
    """
    from rich.console import Console

    from lazarus.models.create import create_checkpoint
    from lazarus.paths import check_output_path

    check_output_path(output, kind="dir")
    path = create_checkpoint(family, output, size=size, seed=seed, dtype=dtype, vocab_size=vocab_size,
                             force=force)
    info = describe_model(path)
    Console().print(f"[green]created[/] {path}: {info['family']}, {_count(info['parameters'])} parameters, "
                    f"{info['dtype']}")


@models.command("info")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(model, as_json):
    """Describe MODEL (a checkpoint directory or hub id) without loading its weights.

    Shows the family, parameter count, dtype, layers, hidden size, heads, vocabulary, whether the
    embeddings are tied, attention window and RoPE settings, files, and provenance if present.
    """
    description = describe_model(model)
    if as_json:
        click.echo(json.dumps(description, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{description['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in description.items():
        if key == "path":
            continue
        if key == "parameters":
            value = f"{_count(value)} ({value:,})"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value) if value else "-"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    Console().print(table)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def describe_model(model: str | Path) -> dict:
    """What ``models info`` shows, as a JSON-ready dict (reads config.json and safetensors headers)."""
    from collections import Counter

    from lazarus import provenance
    from lazarus.errors import LazarusError
    from lazarus.loader import (
        detect_family,
        read_config,
        read_safetensors_header,
        resolve_model_path,
        weight_files,
    )

    path = resolve_model_path(model)
    config = read_config(path)
    spec = detect_family(config, path / "config.json")
    try:
        args = spec.load().ModelArgs.from_hf_config(config)
    except LazarusError as exc:
        raise LazarusError(f"{path / 'config.json'}: {exc}") from None
    files = weight_files(path)
    quant = config.get("quantization") if isinstance(config.get("quantization"), dict) else None
    headers = {key: entry for f in files for key, entry in read_safetensors_header(f).items()}
    parameters, dtypes = 0, Counter[str]()
    for key, entry in headers.items():
        if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and args.tie_word_embeddings):
            continue
        n = 1
        for dim in entry["shape"]:
            n *= dim
        module, _, leaf = key.rpartition(".")
        packed = quant is not None and f"{module}.scales" in headers
        if packed and leaf in ("scales", "biases"):
            continue  # the quantization's own numbers, not parameters of the model
        if packed and quant is not None and leaf == "weight" and entry["dtype"] == "U32":
            bits = _layer_bits(quant, module)
            n = n * 32 // bits  # each uint32 word packs 32 / bits weights
            dtypes[f"{bits}-bit"] += n
        else:
            dtypes[entry["dtype"]] += n
        parameters += n
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    windows = sorted({w for i in range(args.num_hidden_layers) if (w := args.window_for_layer(i))})
    record = provenance.read(path) or {}
    return {
        "path": str(path),
        "family": spec.name,
        "model_type": config.get("model_type"),
        "parameters": parameters,
        "dtype": ", ".join(names.get(d, d) for d, _ in dtypes.most_common()),
        # mlx-lm's layout: the defaults (per-layer overrides are counted, not listed)
        "quantization": ({**{k: v for k, v in quant.items() if not isinstance(v, (dict, bool))},
                          "overridden_layers": sum(isinstance(v, (dict, bool)) for v in quant.values())}
                         if quant is not None else None),
        "layers": args.num_hidden_layers,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "attention_heads": args.num_attention_heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.dim_per_head,
        "vocab_size": args.vocab_size,
        "tied_embeddings": bool(args.tie_word_embeddings),
        "sliding_window": windows[0] if windows else None,
        "sliding_layers": sum(1 for i in range(args.num_hidden_layers) if args.window_for_layer(i)),
        "rope": {"theta": args.rope_theta, **(args.rope_scaling or {"rope_type": "default"})},
        "max_position_embeddings": args.max_position_embeddings,
        "weight_files": [f.name for f in files],
        "size_bytes": sum(f.stat().st_size for f in files),
        "created_by": _created_by(record),
    }


def _layer_bits(quant: dict, module: str) -> int:
    """Bits of a quantized layer: its per-layer override in mlx-lm's config, else the default."""
    override = quant.get(module) or quant.get(module.removeprefix("model."))
    if isinstance(override, dict) and override.get("bits"):
        return int(override["bits"])
    return int(quant.get("bits", 4))


def _created_by(record: dict) -> str | None:
    """Who wrote the checkpoint: ``created_by`` of its lazarus.json, else the command that wrote it
    and the model it came from (``lazarus quantize from lazarus:tiny-math``)."""
    if record.get("created_by"):
        return record["created_by"]
    command = record.get("command")
    if not command:
        return None
    source = record.get("source_model")
    if not isinstance(source, dict):
        source = {}
    return command + (f" from {source['model']}" if source.get("model") else "")
