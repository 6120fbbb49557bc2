"""``lazarus quickstart``: the whole loop in about a minute, offline, on a CPU.

It makes a tiny random Llama, generates arithmetic data, trains a LoRA adapter with the ``sft``
trainer, shows the validation loss before and after, and a greedy generation on a held-out
problem before and after training. Everything lands in one directory.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from lazarus.errors import LazarusError

MARKER = "quickstart.json"


@click.command()
@click.option("--output", "-o", default="quickstart-out", show_default=True, metavar="DIR",
              help="Work directory: model/, data/, adapter/ (a previous quickstart there is replaced).")
@click.option("--steps", default=600, show_default=True, type=click.IntRange(min=1),
              help="Training steps (the default takes about a minute on a 2-core CPU).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for the model weights, the data and training.")
def quickstart(output: str, steps: int, seed: int):
    """Train a LoRA adapter end to end on a tiny model, offline, and show what changed.

    \b
    1. create a tiny random-initialised Llama (2 layers, hidden 64) in OUTPUT/model
    2. generate arithmetic problems in OUTPUT/data (prompt/completion JSONL)
    3. train a LoRA adapter with `lazarus train sft` settings into OUTPUT/adapter
    4. compare the validation loss and a greedy answer to a held-out problem, before and after

    The model starts from random weights, so its text is not meaningful: what to look for is the
    loss falling and the answer taking the shape of the training data.
    """
    from rich.console import Console

    console = Console(stderr=False)
    out = Path(output)
    _check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir, adapter_dir = out / "model", out / "data", out / "adapter"

    console.rule("[bold]Lazarus quickstart")
    console.print(f"1/4 Creating a tiny random-initialised Llama in {model_dir}")
    from lazarus.models.create import create_checkpoint

    create_checkpoint("llama", model_dir, size="tiny", seed=seed, force=True)

    console.print(f"2/4 Generating arithmetic problems in {data_dir}")
    from lazarus.data.math import generate as generate_math
    from lazarus.data.math import write_math_data

    counts = write_math_data(generate_math(1200, seed=seed), data_dir, valid_fraction=0.05,
                             test_fraction=0.05, force=True)["sft"]
    console.print(f"    {counts['train']} train, {counts['valid']} validation, {counts['test']} held-out test "
                  f"problems, e.g. {_first_record(data_dir / 'sft' / 'train.jsonl')}")
    held_out = json.loads((data_dir / "sft" / "test.jsonl").read_text().splitlines()[0])

    import lazarus

    base, tokenizer, _ = lazarus.load_model(str(model_dir))
    before = _greedy(base, tokenizer, held_out["prompt"])
    del base

    console.print(f"3/4 Training a LoRA adapter for {steps} steps into {adapter_dir}")
    from lazarus.plugins import get
    from lazarus.training.config import build_config

    trainer_cls = get("trainer", "sft").load()
    settings = dict(QUICKSTART_SETTINGS, model=str(model_dir), data=str(data_dir / "sft"),
                    output=str(adapter_dir), max_steps=steps, seed=seed,
                    eval_interval=max(1, steps // 8), save_interval=max(1, steps // 2))
    config = build_config(trainer_cls.config_class, cli_values=settings)
    command = "lazarus train sft " + " ".join(
        f"--{key.replace('_', '-')} {shlex.quote(str(value))}" for key, value in settings.items())
    console.print("    the same run from the shell:")
    console.print(f"    {command}", markup=False, highlight=False, soft_wrap=True)
    if adapter_dir.exists():
        import shutil

        shutil.rmtree(adapter_dir)  # a previous quickstart's run: start fresh
    result = trainer_cls(config, console=console).train()
    if result.interrupted:
        raise SystemExit(130)

    console.print("4/4 Before and after")
    model, tokenizer, _ = lazarus.load_model(str(model_dir), adapter_path=str(adapter_dir))
    after = _greedy(model, tokenizer, held_out["prompt"])
    (out / MARKER).write_text(json.dumps({"steps": steps, "seed": seed,
                                          "first_eval_loss": result.first_eval_loss,
                                          "last_eval_loss": result.last_eval_loss}, indent=2) + "\n")
    _report(console, result, held_out, before, after, model_dir, adapter_dir)


#: training settings of the quickstart run (the rest are the sft defaults)
QUICKSTART_SETTINGS = {
    "fine_tune_type": "lora", "rank": 8, "scale": 20.0, "num_layers": -1, "learning_rate": 2e-3,
    "lr_schedule": "cosine", "warmup_steps": 10, "batch_size": 8, "max_seq_length": 128,
    "log_interval": 10, "eval_batches": 8,
}


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise LazarusError(f"{out} is a file; pass --output DIR for the quickstart's work directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not (
            set(p.name for p in out.iterdir()) <= {"model", "data", "adapter"}):
        raise LazarusError(f"{out} exists and holds other files; pass --output with a new or empty "
                           "directory (a previous quickstart's directory is reused)")


def _first_record(path: Path) -> str:
    record = json.loads(path.read_text().splitlines()[0])
    return f"{record['prompt']!r} -> {record['completion']!r}"


def _greedy(model, tokenizer, prompt: str) -> str:
    from lazarus.generate import generate

    return generate(model, tokenizer, prompt, max_tokens=24, temperature=0.0).text


def _report(console, result, held_out, before: str, after: str, model_dir: Path, adapter_dir: Path) -> None:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", title="What training changed")
    table.add_column("")
    table.add_column("before training")
    table.add_column("after training")
    if result.first_eval_loss is not None and result.last_eval_loss is not None:
        table.add_row("validation loss (nats/token)", f"{result.first_eval_loss:.3f}",
                      f"{result.last_eval_loss:.3f}")
    table.add_row(f"greedy answer to {held_out['prompt']!r}", repr(before), repr(after))
    table.caption = f"expected answer: {held_out['completion']!r}"
    console.print(table)
    if result.first_eval_loss is not None and result.last_eval_loss is not None:
        drop = result.first_eval_loss - result.last_eval_loss
        console.print(f"The validation loss fell by {drop:.2f} nats per token "
                      f"({result.first_eval_loss:.2f} -> {result.last_eval_loss:.2f}).")
    console.print(
        "[bold yellow]Note:[/] this model is tiny (2 layers, hidden size 64) and started from random weights, "
        "so its text is not meaningful. The point is the loss falling and the answers taking the shape of "
        "the training data.")
    console.print(f"Adapter (mlx-lm format): {adapter_dir}   loss curve: {adapter_dir / 'loss.png'}")
    console.print("Try it:")
    console.print(f"  lazarus generate --model {shlex.quote(str(model_dir))} --adapter "
                  f"{shlex.quote(str(adapter_dir))} --prompt {shlex.quote(held_out['prompt'])} --max-tokens 24",
                  markup=False, highlight=False, soft_wrap=True)
