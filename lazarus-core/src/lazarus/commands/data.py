"""``lazarus data``: generate training data and inspect JSONL datasets."""

from __future__ import annotations

from pathlib import Path

import click

from lazarus.errors import LazarusError
from lazarus.options import SEED, FiniteFloat


@click.group()
def data():
    """Generate training data and inspect JSONL datasets."""


@data.group()
def generate():
    """Generate synthetic training data."""


@generate.command("math")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write sft/, preference/, prompts/ and dual-reward/ into.")
@click.option("--count", "-n", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Number of distinct problems.")
@click.option("--seed", "-s", default=0, show_default=True, type=SEED,
              help="Random seed; the same seed writes byte-identical files.")
@click.option("--kinds", default="add,sub,mul,div,multi,word", show_default=True, metavar="K1,K2",
              help="Problem kinds, comma-separated: add, sub, mul, div, multi (two steps), word.")
@click.option("--valid-fraction", default=0.1, show_default=True, type=FiniteFloat(0, 1),
              help="Share of problems in valid.jsonl.")
@click.option("--test-fraction", default=0.1, show_default=True, type=FiniteFloat(0, 1),
              help="Share of problems in test.jsonl.")
@click.option("--force", is_flag=True, help="Replace existing files in OUTPUT.")
def generate_math(output: Path, count: int, seed: int, kinds: str, valid_fraction: float,
                  test_fraction: float, force: bool):
    """Arithmetic problems with exact answers, as SFT, preference and RL-prompt data.

    \b
    OUTPUT/sft/{train,valid,test}.jsonl         {"prompt", "completion"}
    OUTPUT/preference/{train,valid,test}.jsonl  {"prompt", "chosen", "rejected"}
    OUTPUT/prompts/{train,valid,test}.jsonl     {"prompt", "answer", "expression", "kind"}
    OUTPUT/dual-reward/{train,valid,test}.jsonl {"prompt", "completion", "label"} (label: add, sub,
                                                mul or div, the operation that gives the answer)

    Every completion ends in "The answer is N."; rejected answers are plausible slips.

    \b
    Example:
      lazarus data generate math --output data/math --count 5000 --seed 1
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from lazarus.data import math as math_data
    from lazarus.paths import check_output_path

    check_output_path(output, kind="dir")
    kind_names = math_data.parse_kinds(kinds)
    math_data.split_counts(count, valid_fraction, test_fraction)  # bad fractions fail before work
    existing = [p for p in math_data.math_output_paths(output) if p.exists()]
    if existing and not force:
        raise LazarusError(f"refusing to overwrite {len(existing)} existing file(s) in {output} "
                           f"(e.g. {existing[0]}); pass --force to replace them")
    console = Console(stderr=True)
    if count >= 20_000 and console.is_terminal:
        columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("math", total=count)
            problems = math_data.generate(count, seed, kind_names,
                                          on_progress=lambda n: progress.advance(task, n))
    else:
        problems = math_data.generate(count, seed, kind_names)
    written = math_data.write_math_data(problems, output, valid_fraction=valid_fraction,
                                        test_fraction=test_fraction, force=force)

    table = Table(title=f"{count} math problems (seed {seed}, kinds {', '.join(kind_names)})")
    table.add_column("directory")
    for split in ("train", "valid", "test"):
        table.add_column(split, justify="right")
    table.add_column("records")
    shapes = {"sft": "prompt, completion", "preference": "prompt, chosen, rejected",
              "prompts": "prompt, answer, expression, kind", "dual-reward": "prompt, completion, label"}
    for sub, splits in written.items():
        table.add_row(str(output / sub), *(str(splits[s]) for s in ("train", "valid", "test")), shapes[sub])
    Console().print(table)


@data.command("info")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "data_format", type=click.Choice(["sft", "preference", "prompt"]),
              help="Read the records as this format (default: detect from the keys).")
@click.option("--model", "-m", metavar="MODEL",
              help="A model directory (or lazarus:NAME) whose tokenizer gives token-length statistics.")
@click.option("--max-seq-length", default=2048, show_default=True, type=int,
              help="With --model: count examples longer than this.")
@click.option("--chat-template", is_flag=True,
              help="With --model: wrap plain prompt/completion strings in the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(path: Path, data_format: str | None, model: str | None, max_seq_length: int,
         chat_template: bool, as_json: bool):
    """Records per split, the detected record kind and, with --model, token lengths.

    PATH is a .jsonl file or a directory with train.jsonl / valid.jsonl / test.jsonl.
    """
    import json
    import warnings

    from lazarus.data.records import load_splits

    splits = load_splits(path, format=data_format)
    report: dict = {"path": str(path), "kind": splits.kind, "format": splits.format, "splits": {}}
    tokenizer = None
    if model is not None:
        from lazarus.loader import resolve_model_path
        from lazarus.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(resolve_model_path(model))
    for name, dataset in splits.items():
        entry: dict = {"file": str(dataset.path), "records": len(dataset)}
        if tokenizer is not None and len(dataset):
            import numpy as np

            from lazarus.data.examples import tokenize

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the counts are reported below instead
                tokenized = tokenize(dataset, tokenizer, max_seq_length=None, chat_template=chat_template)
            lengths = tokenized.lengths
            entry["tokens"] = {
                "min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                "median": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95)),
                "max": int(lengths.max()), "total": int(lengths.sum()),
                f"over_{max_seq_length}": int((lengths > max_seq_length).sum())}
        report["splits"][name] = entry
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path}: {report['kind']} records ({report['format']} data)")
    table.add_column("split")
    table.add_column("records", justify="right")
    stats = ("min", "median", "mean", "p95", "max", f"over_{max_seq_length}")
    if tokenizer is not None:
        for column in stats:
            table.add_column(column.replace("_", " ") if column.startswith("over") else f"{column} tokens",
                             justify="right")
    for name, entry in report["splits"].items():
        cells = [name, str(entry["records"])]
        if tokenizer is not None:
            cells += [str(entry.get("tokens", {}).get(c, "-")) for c in stats]
        table.add_row(*cells)
    Console().print(table)
