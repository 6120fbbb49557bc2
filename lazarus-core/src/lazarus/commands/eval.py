"""``lazarus eval``: generate for every prompt of a JSONL file, score with reward plugins, report.

Prompts are generated in batches (left-padded, KV-cached, finished rows leave the batch) with
greedy decoding by default. Each row is scored by the ``--reward`` functions (the same loading and
checks as the RL trainers: :mod:`lazarus.rewards`); the summary gives the mean reward and the
accuracy (share of rows whose weighted reward reaches ``--success``) with 95% confidence
intervals, and every row goes to a results JSONL written atomically at the end. While it
generates, a progress bar on stderr shows the rows done and the accuracy so far (a line per batch
when stderr is not a terminal).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from lazarus.errors import LazarusError
from lazarus.options import FINITE_FLOAT, SEED, FiniteFloat

Z95 = 1.959963984540054
#: where results go without --output; eval replaces its own earlier results there
DEFAULT_OUTPUT = "eval-results.jsonl"


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1], sensible for 0 or n successes)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """``(mean, low, high)``: normal-approximation interval of the mean (sample std, n - 1)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * std / math.sqrt(n)
    return mean, mean - half, mean + half


def _data_file(data: str, split: str) -> Path:
    path = Path(data)
    if path.is_dir():
        path = path / f"{split}.jsonl"
        if not path.is_file():
            raise LazarusError(f"{data}: no {split}.jsonl in this directory; pass a .jsonl file or --split")
    elif not path.is_file():
        raise LazarusError(f"--data {data}: no such file or directory")
    return path


@click.command(name="eval")
@click.option("--model", "-m", "model_path", required=True, metavar="PATH", help="Model directory (or hub id).")
@click.option("--adapter", "adapter_path", metavar="DIR", default=None, help="Adapter directory to apply.")
@click.option("--data", required=True, metavar="PATH",
              help="Prompt JSONL ({prompt or messages, ...fields the rewards read}), or a directory "
                   "holding SPLIT.jsonl.")
@click.option("--split", default="test", show_default=True, help="Which file of a --data directory to read.")
@click.option("--reward", "rewards", multiple=True, required=True, metavar="NAME[:W]",
              help="Reward function (repeatable; NAME:WEIGHT weights it).")
@click.option("--output", "-o", metavar="FILE", default=None,
              help=f"Per-row results JSONL [default: ./{DEFAULT_OUTPUT}, replaced by the next eval].")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--max-tokens", "-n", default=None, type=click.IntRange(min=1),
              help="Most tokens generated per prompt [default: 256, or what fits the model's context after "
                   "the longest prompt].")
@click.option("--temperature", "-t", default=0.0, show_default=True, type=FiniteFloat(0),
              help="Sampling temperature (0: greedy).")
@click.option("--top-p", default=1.0, show_default=True, type=FiniteFloat(0, 1), help="Nucleus sampling.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the sampling.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Prompts generated together.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts.")
@click.option("--chat-template", is_flag=True, help="Wrap string prompts as a user turn of the chat template.")
@click.option("--success", default=1.0, show_default=True, type=FINITE_FLOAT,
              help="A row counts as correct when its weighted reward is at least this.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def eval_command(model_path, adapter_path, data, split, rewards, output, force, max_tokens, temperature, top_p,
                 seed, batch_size, limit, chat_template, success, as_json):
    """Score a model on prompts with reward functions: mean reward and accuracy with 95% intervals.

    \b
    Example:
      lazarus eval --model M --adapter run --data math/prompts --reward arithmetic
    """
    from lazarus.paths import check_output_path
    from lazarus.rewards import load_rewards

    path = _data_file(data, split)
    out = Path(output) if output else Path(DEFAULT_OUTPUT)
    check_output_path(out, kind="file")
    if out.exists() and not force:
        if output is not None or not _is_eval_results(out):
            raise LazarusError(f"{out} already exists; pass --force to overwrite it or choose another --output")
        click.echo(f"Note: replacing the results of an earlier eval in {out} (--output FILE keeps them apart)",
                   err=True)
    reward_fns = load_rewards(rewards)  # unknown names fail before the model loads

    from lazarus.data.examples import tokenize_prompts
    from lazarus.data.records import read_dataset
    from lazarus.loader import load_model

    dataset = read_dataset(path, format="prompt")
    if not len(dataset):
        raise LazarusError(f"{path}: no records (the file is empty)")
    from lazarus.rewards import check_applies

    check_applies(reward_fns, dataset, str(path))  # a reward that scores no row measures nothing
    model, tokenizer, _ = load_model(model_path, adapter_path=adapter_path)
    examples = list(tokenize_prompts(dataset, tokenizer, chat_template=chat_template))[:limit]
    from lazarus.commands.generate import fitting_max_tokens
    from lazarus.generate import context_warning

    longest = max((len(e.prompt_ids) for e in examples), default=0)
    if max_tokens is None:
        max_tokens = fitting_max_tokens(model, longest)
    past_context = context_warning(model, longest, max_tokens, option="--max-tokens")
    if past_context:  # said once here, not once per batch
        click.echo(f"Warning: {past_context}", err=True)
    rows, totals = _run(model, tokenizer, examples, reward_fns, max_tokens=max_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, batch_size=batch_size, success=success)
    if rows and all(v is None for row in rows for v in row["rewards"].values()):
        raise LazarusError(f"--reward {','.join(r.label for r in reward_fns)} scored none of the {len(rows)} "
                           f"completions (each reward returned None, 'not applicable'): nothing was scored, so "
                           "there is no accuracy to report; check the reward against the data's fields")

    from lazarus.data.records import write_jsonl

    write_jsonl(out, rows, force=True)
    correct = sum(1 for r in rows if r["correct"])
    mean, low, high = mean_interval(totals)
    acc_low, acc_high = wilson_interval(correct, len(rows))
    by_reward = {}
    for r in reward_fns:
        values = [row["rewards"][r.name] for row in rows if row["rewards"][r.name] is not None]
        if values:
            by_reward[r.name] = sum(values) / len(values)
    summary = {"rows": len(rows), "reward_mean": mean, "reward_ci95": [low, high],
               "accuracy": correct / len(rows) if rows else 0.0, "accuracy_ci95": [acc_low, acc_high],
               "correct": correct, "rewards": by_reward, "output": str(out), "data": str(path),
               "model": model_path, "adapter": adapter_path}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{len(rows)} prompts from {path} (at most {max_tokens} tokens each)")
    click.echo(f"mean reward {mean:.4f}  (95% CI {low:.4f} .. {high:.4f})")
    click.echo(f"accuracy    {summary['accuracy']:.4f}  ({correct}/{len(rows)} rows with reward >= {success:g}; "
               f"95% CI {acc_low:.4f} .. {acc_high:.4f})")
    for name, value in by_reward.items():
        click.echo(f"  {name}: {value:.4f}")
    click.echo(f"per-row results: {out}")


def summary_line(summary: dict) -> str:
    """One line for people from an eval's JSON summary: accuracy with its 95% interval, the mean
    reward and where the rows went (what a recipe's eval stage prints)."""
    low, high = summary.get("accuracy_ci95", [0.0, 0.0])
    return (f"accuracy {summary.get('accuracy', 0.0):.1%} ({summary.get('correct', 0)}/{summary.get('rows', 0)}, "
            f"95% CI {low:.1%}..{high:.1%}), mean reward {summary.get('reward_mean', 0.0):.3f}; "
            f"rows in {summary.get('output', '-')}")


def _is_eval_results(path: Path) -> bool:
    """Whether ``path`` holds rows written by ``lazarus eval`` (so that eval may replace it)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        row = json.loads(first) if first.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(row, dict) and {"prompt", "completion", "reward", "correct"} <= row.keys()


class _Progress:
    """Rows generated and the accuracy so far, on stderr: a live bar on a terminal, else a line per batch."""

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.total = total
        self.console = Console(stderr=True)
        self.bar = None
        if self.console.is_terminal:
            import rich.progress as rp

            self.bar = rp.Progress(rp.SpinnerColumn(), rp.TextColumn("[bold]eval"), rp.BarColumn(),
                                   rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[accuracy]}"),
                                   rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), console=self.console,
                                   transient=True)
            self.task = self.bar.add_task("eval", total=total, accuracy="accuracy -")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

    def update(self, done: int, correct: int) -> None:
        text = f"accuracy so far {correct / max(done, 1):.1%} ({correct}/{done})"
        if self.bar is not None:
            self.bar.update(self.task, completed=done, accuracy=text)
        else:
            click.echo(f"eval: {done}/{self.total} prompts, {text}", err=True)


def _run(model, tokenizer, examples, reward_fns, *, max_tokens, temperature, top_p, seed, batch_size, success):
    import warnings

    from lazarus.generate import ContextLengthWarning, SamplingConfig, batch_generate
    from lazarus.rewards import score

    rows: list[dict] = []
    totals: list[float] = []
    with _Progress(len(examples)) as progress:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            sampling = SamplingConfig(temperature=temperature, top_p=top_p, seed=seed + start)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ContextLengthWarning)  # said once, before generating
                results = batch_generate(model, tokenizer, [list(map(int, e.prompt_ids)) for e in chunk],
                                         max_tokens=max_tokens, sampling=sampling)
            records = [{**e.record.extra, "completion_ids": list(r.token_ids)}
                       for e, r in zip(chunk, results, strict=True)]
            scores = score(reward_fns, [e.record.prompt for e in chunk], [r.text for r in results], records,
                           [e.record.source for e in chunk])
            for i, (example, result) in enumerate(zip(chunk, results, strict=True)):
                total = scores.total[i]
                totals.append(total)
                rows.append({"index": example.record_index, "prompt": example.record.prompt,
                             "completion": result.text, "reward": total,
                             "rewards": {name: values[i] for name, values in scores.by_reward.items()},
                             "correct": total >= success, "completion_tokens": len(result.token_ids),
                             "finish_reason": result.finish_reason,
                             **{k: v for k, v in example.record.extra.items()
                                if k not in ("prompt", "completion", "reward")}})
            progress.update(len(rows), sum(1 for r in rows if r["correct"]))
    return rows, totals
