"""``lazarus export``: write a model in another tool's format (GGUF for llama.cpp).

Imports only click at top level; mlx and model code load inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def export():
    """Write a model (with an adapter folded in) in another tool's format."""


@export.command("gguf")
@click.option("--model", "-m", "model_name", required=True, metavar="MODEL",
              help="Full-precision model: a local directory (HF layout) or a hub id.")
@click.option("--adapter", "adapter_path", default=None, type=click.Path(exists=True, path_type=Path),
              help="An adapter directory to fold into the weights first.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .gguf file to write; must not exist.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Dtype of the weights (norms stay float32; default: as stored, bfloat16 as float16).")
def gguf(model_name: str, adapter_path: Path | None, output: Path, dtype: str | None):
    """Write MODEL (and ADAPTER, fused) as a GGUF file that llama.cpp and other GGUF readers load.

    Supported: llama, mistral and qwen2 checkpoints without sliding windows, with byte-level BPE
    tokenizers. Example:

        lazarus export gguf --model ./base --adapter ./run --output model.gguf
    """
    from rich.console import Console

    from lazarus import checkpoints
    from lazarus.adapters import fuse_adapter, load_adapter
    from lazarus.checkpoints.gguf import architecture
    from lazarus.errors import LazarusError
    from lazarus.loader import load_model
    from lazarus.paths import check_output_path

    check_output_path(output, kind="file", option="--output")
    if output.exists():
        raise LazarusError(f"--output {output}: already exists; choose another file name")
    console = Console(stderr=True)
    with console.status(f"Loading {model_name}"):
        model, _tokenizer, config = load_model(model_name)
        architecture(model)  # fail before the adapter work for a family GGUF cannot express
    if adapter_path is not None:
        with console.status(f"Folding in {adapter_path}"):
            fuse_adapter(model, load_adapter(model, adapter_path))
    with console.status(f"Writing {output}"):
        checkpoints.save("gguf", output, model=model, config=config, tokenizer_dir=Path(model.source.path),
                         dtype=dtype)
    console.print(f"[green]Wrote[/] {output} ({output.stat().st_size / 1e6:.1f} MB)")
