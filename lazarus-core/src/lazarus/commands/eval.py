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

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation, result_dict
from lazarus.options import FINITE_FLOAT, SEED, FiniteFloat
from lazarus.training.config import setting

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


def _data_file(data: str | None, split: str) -> Path:
    assert data is not None  # a required setting (make_options checks it)
    path = Path(data)
    if path.is_dir():
        path = path / f"{split}.jsonl"
        if not path.is_file():
            raise LazarusError(f"{data}: no {split}.jsonl in this directory; pass a .jsonl file or --split")
    elif not path.is_file():
        raise LazarusError(f"--data {data}: no such file or directory")
    return path


@attrs.define(kw_only=True)
class EvalOptions:
    """The options of ``lazarus eval`` (recipe ``eval`` stage keys; ``--json`` only shapes the CLI's output)."""

    model: str | None = setting(None, "Model directory (or hub id).", required=True, flags=("-m",),
                                metavar="PATH")
    adapter: str | None = setting(None, "Adapter directory to apply.", metavar="DIR")
    data: str | None = setting(None, "Prompt JSONL ({prompt or messages, ...fields the rewards read}), or a "
                                     "directory holding SPLIT.jsonl.", required=True, metavar="PATH")
    split: str = setting("test", "Which file of a --data directory to read.")
    reward: tuple[str, ...] = setting((), "Reward function (repeatable; NAME:WEIGHT weights it).", required=True,
                                      metavar="NAME[:W]")
    output: str | None = setting(None, f"Per-row results JSONL [default: ./{DEFAULT_OUTPUT}, replaced by the next "
                                       "eval].", flags=("-o",), metavar="FILE")
    force: bool = setting(False, "Overwrite an existing --output file.")
    max_tokens: int | None = setting(None, "Most tokens generated per prompt [default: 256, or what fits the "
                                           "model's context after the longest prompt].", flags=("-n",),
                                     type=click.IntRange(min=1), minimum=1)
    temperature: float = setting(0.0, "Sampling temperature (0: greedy).", flags=("-t",), type=FiniteFloat(0),
                                 minimum=0.0)
    top_p: float = setting(1.0, "Nucleus sampling.", type=FiniteFloat(0, 1), minimum=0.0, maximum=1.0)
    seed: int = setting(0, "Seed of the sampling.", type=SEED, minimum=0)
    batch_size: int = setting(32, "Prompts generated together.", type=click.IntRange(min=1), minimum=1)
    limit: int | None = setting(None, "Only the first N prompts.", type=click.IntRange(min=1), minimum=1)
    chat_template: bool = setting(False, "Wrap string prompts as a user turn of the chat template.")
    success: float = setting(1.0, "A row counts as correct when its weighted reward is at least this.",
                             type=FINITE_FLOAT)
    json: bool = setting(False, "Print the summary as JSON.")


@attrs.frozen(kw_only=True)
class EvalResult:
    """What an eval measured: the mean reward and the accuracy with their 95% intervals."""

    rows: int
    reward_mean: float
    reward_ci95: list[float]
    accuracy: float
    accuracy_ci95: list[float]
    correct: int
    rewards: dict[str, float]  #: mean of each reward over the rows it applies to
    output: str  #: the per-row results JSONL
    data: str
    model: str | None
    adapter: str | None
    max_tokens: int  #: most tokens generated per prompt (given, or what fitted the context)


def _check(options: EvalOptions) -> EvalOptions:
    """Before the model loads: the data file, the output (an earlier eval's results are replaced
    with a note; anything else needs --force) and the reward names."""
    from lazarus.paths import check_output_path
    from lazarus.rewards import load_rewards

    _data_file(options.data, options.split)
    out = Path(options.output) if options.output else Path(DEFAULT_OUTPUT)
    check_output_path(out, kind="file")
    if out.exists() and not options.force:
        if options.output is not None or not _is_eval_results(out):
            raise LazarusError(f"{out} already exists; pass --force to overwrite it or choose another --output")
        click.echo(f"Note: replacing the results of an earlier eval in {out} (--output FILE keeps them apart)",
                   err=True)
    load_rewards(options.reward)  # unknown names fail before the model loads
    return attrs.evolve(options, output=str(out), force=True)


def _show(result: EvalResult, options: EvalOptions) -> None:
    if options.json:
        click.echo(json.dumps(result_dict(result), indent=2))
        return
    click.echo(f"{result.rows} prompts from {result.data} (at most {result.max_tokens} tokens each)")
    low, high = result.reward_ci95
    acc_low, acc_high = result.accuracy_ci95
    click.echo(f"mean reward {result.reward_mean:.4f}  (95% CI {low:.4f} .. {high:.4f})")
    click.echo(f"accuracy    {result.accuracy:.4f}  ({result.correct}/{result.rows} rows with reward >= "
               f"{options.success:g}; 95% CI {acc_low:.4f} .. {acc_high:.4f})")
    for name, value in result.rewards.items():
        click.echo(f"  {name}: {value:.4f}")
    click.echo(f"per-row results: {result.output}")


def _summary(result: EvalResult) -> str:
    return summary_line(result_dict(result))


@operation(options=EvalOptions, metric="accuracy", name="eval", check=_check, show=_show, summary=_summary,
           result_file="summary.json")
def evaluate(model, tokenizer, options: EvalOptions) -> EvalResult:
    """Score a model on prompts with reward functions: mean reward and accuracy with 95% intervals.

    \b
    Example:
      lazarus eval --model M --adapter run --data math/prompts --reward arithmetic
    """
    if not options.force:
        options = _check(options)
    from lazarus.data.examples import tokenize_prompts
    from lazarus.data.records import read_dataset, write_jsonl
    from lazarus.rewards import check_applies, load_rewards

    path = _data_file(options.data, options.split)
    out = Path(options.output or DEFAULT_OUTPUT)  # (_check fills it in; force=True from Python skips _check)
    reward_fns = load_rewards(options.reward)
    dataset = read_dataset(path, format="prompt")
    if not len(dataset):
        raise LazarusError(f"{path}: no records (the file is empty)")
    check_applies(reward_fns, dataset, str(path))  # a reward that scores no row measures nothing
    examples = list(tokenize_prompts(dataset, tokenizer, chat_template=options.chat_template))[:options.limit]
    from lazarus.commands.generate import fitting_max_tokens
    from lazarus.generation import context_warning

    longest = max((len(e.prompt_ids) for e in examples), default=0)
    max_tokens = options.max_tokens
    if max_tokens is None:
        max_tokens = fitting_max_tokens(model, longest)
    past_context = context_warning(model, longest, max_tokens, option="--max-tokens")
    if past_context:  # said once here, not once per batch
        click.echo(f"Warning: {past_context}", err=True)
    rows, totals = _run(model, tokenizer, examples, reward_fns, max_tokens=max_tokens,
                        temperature=options.temperature, top_p=options.top_p, seed=options.seed,
                        batch_size=options.batch_size, success=options.success)
    if rows and all(v is None for row in rows for v in row["rewards"].values()):
        raise LazarusError(f"--reward {','.join(r.label for r in reward_fns)} scored none of the {len(rows)} "
                           f"completions (each reward returned None, 'not applicable'): nothing was scored, so "
                           "there is no accuracy to report; check the reward against the data's fields")
    write_jsonl(out, rows, force=True)
    correct = sum(1 for r in rows if r["correct"])
    mean, low, high = mean_interval(totals)
    acc_low, acc_high = wilson_interval(correct, len(rows))
    by_reward = {}
    for r in reward_fns:
        values = [row["rewards"][r.name] for row in rows if row["rewards"][r.name] is not None]
        if values:
            by_reward[r.name] = sum(values) / len(values)
    return EvalResult(rows=len(rows), reward_mean=mean, reward_ci95=[low, high],
                      accuracy=correct / len(rows) if rows else 0.0, accuracy_ci95=[acc_low, acc_high],
                      correct=correct, rewards=by_reward, output=str(out), data=str(path), model=options.model,
                      adapter=options.adapter, max_tokens=max_tokens)


eval_command = evaluate.command("eval")


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

    from lazarus.generation import ContextLengthWarning, SamplingConfig, batch_generate
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
