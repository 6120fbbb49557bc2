"""``lazarus quantize``: write a model's weights quantized, in mlx-lm's layout.

Imports only click at top level; mlx and model code load inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from lazarus.errors import LazarusError


@click.command()
@click.option("--model", "-m", "model_name", required=True, metavar="MODEL",
              help="Full-precision model: a local directory (HF layout) or a hub id.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write; must not exist or be empty.")
@click.option("--bits", type=click.Choice(["2", "3", "4", "5", "6", "8"]), default="4", show_default=True,
              help="Bits per weight.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Weights sharing one scale and bias.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Dtype of the scales and of the layers left unquantized (default: the model's).")
def quantize(model_name: str, output: Path, bits: str, group_size: str, dtype: str | None):
    """Quantize MODEL's linear and embedding layers and save it in mlx-lm's quantized layout.

    The result loads with `lazarus.load_model` (generation, introspection, QLoRA training) and
    with mlx-lm. Layers whose input size is not a multiple of --group-size stay unquantized.

    Example: lazarus quantize --model ./base --bits 4 --group-size 64 --output ./base-4bit
    """
    from rich.console import Console

    from lazarus import checkpoints
    from lazarus.loader import load_model
    from lazarus.models.quantize import quantize_model
    from lazarus.paths import check_output_path

    out = check_output_path(output, kind="dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LazarusError(f"--output {output}: exists and is not empty; choose a new directory")
    where = Path(model_name)
    if where.exists() and (out.absolute() == where.absolute() or where.absolute() in out.absolute().parents):
        raise LazarusError(f"--output {output} lies inside the model directory {model_name}; choose another")

    console = Console(stderr=True)
    with console.status(f"Loading {model_name}"):
        model, _tokenizer, config = load_model(model_name, dtype=dtype)
    if config.get("quantization") or config.get("quantization_config"):
        raise LazarusError(f"{model_name}: already quantized; quantize the full-precision checkpoint")
    with console.status(f"Quantizing to {bits} bits, groups of {group_size}"):
        settings = quantize_model(model, bits=int(bits), group_size=int(group_size))
    config = {**config, "quantization": settings, "quantization_config": settings}
    with console.status(f"Writing {output}"):
        checkpoints.save("hf", out, model=model, config=config,
                         provenance={"command": "lazarus quantize", "quantization": settings})
    console.print(f"[green]Quantized[/] {model_name} to {bits} bits (group size {group_size}) -> {output}")
