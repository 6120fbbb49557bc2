"""``lazarus adapters``: look inside an adapter, or fuse it into its base model.

Imports only click at top level; mlx and model code load inside the commands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from lazarus.errors import LazarusError

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)\.([^.]+)$")


@click.group()
def adapters():
    """Inspect LoRA/DoRA/full adapters and fuse them into their base model.

    Adapters are mlx-lm adapter directories (adapter_config.json + adapters.safetensors), as
    written by Lazarus trainers or by mlx_lm.lora; legacy .npz LoRA files are read too.
    """


def describe_adapter(path: str) -> dict:
    """Everything ``adapters info`` shows, as a JSON-ready dict."""
    from lazarus.adapters import count_parameters, read_adapter

    checkpoint = read_adapter(path)
    config = checkpoint.config
    layers, keys, dtypes = set(), set(), set()
    for key, value in checkpoint.weights.items():
        dtypes.add(str(value.dtype).rsplit(".", 1)[-1])
        match = _LAYER_KEY.search(key)
        if match:
            layers.add(int(match.group(1)))
            keys.add(f"{match.group(2)}.{match.group(3)}" if config.replaces_weights else match.group(2))
        else:
            keys.add(key.rsplit(".", 1)[0])
    low_rank = not config.replaces_weights
    return {
        "path": str(checkpoint.path),
        "format": checkpoint.format,
        "type": config.fine_tune_type,
        "rank": config.rank if low_rank else None,
        "scale": config.scale if low_rank else None,
        "dropout": config.lora_parameters.dropout if low_rank else None,
        "num_layers": config.num_layers,
        "layers": sorted(layers),
        "keys": sorted(keys),
        "config_keys": list(config.keys) if config.keys is not None else None,
        "parameters": count_parameters(checkpoint.weights),
        "tensors": len(checkpoint.weights),
        "dtypes": sorted(dtypes),
        "provenance": checkpoint.provenance,
    }


def _layers_text(layers: list[int]) -> str:
    if not layers:
        return "-"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]} ({len(layers)} blocks)" if len(layers) > 1 else str(layers[0])
    return ", ".join(map(str, layers))


def _provenance_rows(record: dict) -> list[tuple[str, str]]:
    rows = []
    source = record.get("source_model") or {}
    if source:
        rows.append(("source model", f"{source.get('model')} ({source.get('family') or '?'})"))
    for label, key in (("created", "created"), ("lazarus", "lazarus_version"), ("mlx", "mlx_version"),
                       ("git sha", "git_sha"), ("trainer", "trainer")):
        if record.get(key):
            rows.append((label, str(record[key])))
    if record.get("data_sha256"):
        rows.append(("data", ", ".join(f"{k} {v[:12]}" for k, v in record["data_sha256"].items())))
    return rows


@adapters.command("info")
@click.argument("adapter_path", metavar="ADAPTER", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(adapter_path: str, as_json: bool):
    """Show an adapter's type, rank, scale, layers, target keys, size and provenance.

    ADAPTER is an adapter directory (or a legacy .npz file).
    """
    described = describe_adapter(adapter_path)
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Adapter {described['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("type", described["type"])
    table.add_row("format", described["format"])
    if described["rank"] is not None:
        table.add_row("rank", str(described["rank"]))
        table.add_row("scale", f"{described['scale']:g}")
        table.add_row("dropout", f"{described['dropout']:g}")
    num_layers = described["num_layers"]
    table.add_row("num_layers", "all" if num_layers <= 0 else str(num_layers))
    table.add_row("layers", _layers_text(described["layers"]))
    table.add_row("keys", "\n".join(described["keys"]) or "-")
    table.add_row("parameters", f"{described['parameters']:,} in {described['tensors']} tensors "
                                f"({', '.join(described['dtypes'])})")
    rows = _provenance_rows(described["provenance"])
    for label, value in rows:
        table.add_row(label, value)
    if not described["provenance"]:
        table.add_row("provenance", "none (no lazarus.json; written by another tool)")
    Console().print(table)


@adapters.command("fuse")
@click.option("--model", "-m", "model_name", required=True,
              help="Base model: a local Hugging Face directory or a hub id.")
@click.option("--adapter", "-a", "adapter_path", required=True, type=click.Path(exists=True),
              help="Adapter directory (mlx-lm layout) or legacy .npz trained on that model.")
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Directory for the fused model (Hugging Face layout); replaced atomically.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Save the fused weights in this dtype (default: the base model's).")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Split weights into shards of at most this size (with model.safetensors.index.json).")
@click.option("--dequantize", is_flag=True,
              help="Write plain float weights even if the base model is quantized.")
def fuse(model_name: str, adapter_path: str, output: str, dtype: str | None, max_shard_size: str,
         dequantize: bool):
    """Fold an adapter into its base model and save the result as a Hugging Face checkpoint.

    The output loads with `lazarus.load_model` (and with mlx-lm) and no adapter.

    Example: lazarus adapters fuse --model ./base --adapter ./adapters --output ./fused
    """
    from rich.console import Console

    from lazarus import checkpoints
    from lazarus.adapters import fuse_adapter, load_adapter
    from lazarus.checkpoints.hf import parse_size
    from lazarus.loader import load_model
    from lazarus.paths import check_output_path

    out = check_output_path(output, kind="dir")
    parse_size(max_shard_size)  # fail on a bad size before the slow part
    for what, where in (("the base model", Path(model_name)), ("the adapter", Path(adapter_path))):
        if where.exists() and (out == where.absolute() or out in where.absolute().parents):
            raise LazarusError(f"--output {output} would replace {what} at {where}; choose another directory")

    console = Console(stderr=True)
    with console.status(f"Loading {model_name}"):
        model, _tokenizer, config = load_model(model_name)
    with console.status(f"Applying and fusing {adapter_path}"):
        adapter_config = load_adapter(model, adapter_path)
        fuse_adapter(model, adapter_config, dequantize=dequantize)
    source = getattr(model, "source", None)
    source_dir = Path(source.path) if source is not None and source.path else (
        Path(model_name) if Path(model_name).is_dir() else None)
    adapter_dir = Path(adapter_path) if Path(adapter_path).is_dir() else Path(adapter_path).parent
    with console.status(f"Writing {output}"):
        checkpoints.save(
            "hf", out, model=model, config=config if isinstance(config, dict) else None,
            source=source_dir, dtype=dtype, max_shard_size=max_shard_size,
            provenance={"command": "lazarus adapters fuse", "adapter_path": str(Path(adapter_path).absolute()),
                        "adapter_config": adapter_dir / "adapter_config.json"
                        if (adapter_dir / "adapter_config.json").is_file() else None,
                        "fused_fine_tune_type": adapter_config.fine_tune_type},
        )
    console.print(f"[green]Fused[/] {adapter_config.fine_tune_type} adapter {adapter_path} into "
                  f"{model_name} -> {output}")
