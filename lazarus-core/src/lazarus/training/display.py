"""What a training run shows (part of :class:`~lazarus.training.trainer.Trainer`): the run's
description, the progress bars (training and validation), the eval lines and the summary; only
rank 0 prints."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from lazarus.training.config import resolve_eval_batches, resolve_log_interval, resolve_warmup
from lazarus.training.metrics import headline_text, metric_label
from lazarus.training.parts import TrainerParts

METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss.png"

if TYPE_CHECKING:
    from lazarus.training.run_state import TrainResult


class TrainerDisplay(TrainerParts):
    """Progress, eval lines and the summary of a run; mixed into the trainer base."""

    def log(self, message: str) -> None:
        """Print on rank 0; long lines are left to the terminal (rich would break paths apart)."""
        if self.console is not None:
            self.console.print(message, soft_wrap=True)

    @functools.cached_property
    def log_every(self) -> int:
        """Steps between train-metric rows: ``--log-interval``, or scaled down for a short run."""
        return resolve_log_interval(self.config, self.total_steps())

    @functools.cached_property
    def eval_batch_limit(self) -> int:
        """Validation batches per evaluation: ``--eval-batches``, or bounded by the run's length."""
        return resolve_eval_batches(self.config, self.total_steps())

    def _describe(self, total_steps: int, start_step: int) -> None:
        c = self.config
        ranks = f" on {self.world.describe()}" if self.world.distributed else ""
        lora = self.adapter_config
        adapter = ("full fine-tune" if self.full_fine_tune or lora is None
                   else f"{lora.fine_tune_type} rank {lora.rank}")
        valid = f", {len(self.valid_examples)} validation" if self.valid_examples is not None else ""
        warmup = resolve_warmup(c, total_steps)
        schedule = c.lr_schedule + (f", {warmup} warmup step{'s' if warmup > 1 else ''}" if warmup else "")
        self.log(f"Training [bold]{self.name}[/] on {c.model} ({adapter}, "
                 f"{self.num_trainable / 1e6:.3f}M trainable parameters){ranks}: "
                 f"{len(self.train_examples)} training examples{valid}, {total_steps} steps of "
                 f"{c.batch_size}×{c.grad_accumulation} examples, lr {c.learning_rate:g} ({schedule})")
        if self.valid_examples is not None and len(self.valid_examples):
            available = self._iterator(self.valid_examples, shuffle=False).batches_per_epoch(0)
            limit = self.eval_batch_limit
            per_eval = available if limit < 0 else min(limit, available)
            when = (f"every {c.eval_interval} steps and at the end" if c.eval_interval and c.eval_interval < total_steps
                    else "at the start and the end")
            evals = 2 + ((total_steps - 1) // c.eval_interval if c.eval_interval else 0)
            self.log(f"Validation: {per_eval} of {available} batches {when} ({evals * per_eval} batches over the "
                     f"run, next to {total_steps * c.grad_accumulation} training batches; --eval-batches sets it)")
        if self._quantized_on_cpu():
            self.log("[yellow]Note: QLoRA on the CPU: training on a quantized base runs much slower here than on "
                     "its float16 model (quantized matmuls are fast on a GPU, not on a CPU); on a CPU, train "
                     "LoRA on the unquantized model instead.[/]")

    def _quantized_on_cpu(self) -> bool:
        if mx.default_device() != mx.cpu:
            return False
        return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in self.model.named_modules())

    def _headline_text(self, row: dict) -> str:
        """The progress bar's figures: the headline metrics of a train row."""
        return headline_text(row, self.headline_metrics) or "-"

    def _eval_line(self, step: int, loss: float | None) -> str:
        """``step N: eval loss X · pref accuracy Y ...`` after an evaluation."""
        others = headline_text(self.eval_metrics, [k for k in self.headline_metrics if k != "loss"],
                               sep=" · ")
        text = f"step {step}: eval loss {loss:.4f}" if loss is not None else f"step {step}: eval"
        return text + (f" · {others}" if others else "")

    def _progress(self, total_steps: int, start_step: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("lr {task.fields[lr]}"), TimeRemainingColumn(),
            console=self.console, disable=not self.show_progress, transient=False,
        )
        return self._bar

    @contextlib.contextmanager
    def _eval_progress(self, batches: int):
        """A bar for the validation batches of one evaluation (on the training bar while it runs);
        yields the function that advances it."""
        bar = self._bar
        if not self.show_progress or self.console is None or not self.console.is_terminal:
            yield lambda: None
            return
        if bar is not None and bar.live.is_started:
            task = bar.add_task("eval", total=batches, metrics="validation batches", tps="-", lr="-")
            try:
                yield lambda: bar.advance(task)
            finally:
                bar.remove_task(task)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("validation batches"),
                      TimeElapsedColumn(), console=self.console, transient=True) as own:
            task = own.add_task("eval", total=batches)
            yield lambda: own.advance(task)

    def _report_interrupt(self, result: TrainResult, total_steps: int) -> None:
        if self.console is None:
            return
        self.console.print(f"[yellow]Interrupted at step {result.step}/{total_steps}.[/] Checkpoint saved to:")
        # never wrapped or styled: the user copies these lines
        self.console.print(f"  {result.checkpoint}", markup=False, highlight=False, soft_wrap=True)
        self.console.print("Resume with:")
        self.console.print(f"  {result.resume_command}", markup=False, highlight=False, soft_wrap=True)

    def _summary(self, result: TrainResult) -> None:
        if self.console is None:
            return
        lines = [f"[green]Done:[/] {result.step} steps; weights in {self.output}"]
        evals = _previous_evals(self.output) if self.world.is_main else []
        first = next((r for r in evals if r.get("step") == 0), None)
        last = evals[-1] if evals else None
        if result.first_eval_loss is not None and result.last_eval_loss is not None:
            text = f"eval loss {result.first_eval_loss:.4f} -> {result.last_eval_loss:.4f}"
            sizes = (first or {}).get("eval_batches"), (last or {}).get("eval_batches")
            if None not in sizes and sizes[0] != sizes[1]:
                text += (f" (over {sizes[0]} and {sizes[1]} validation batches: --eval-batches changed on resume, "
                         "so the two are not the same measurement)")
            lines.append(text)
        change = self._headline_change(first, last, result)
        if change:
            lines.append(change)
        lines.append(f"metrics: {self.output / METRICS_FILE}, loss curve: {self.output / LOSS_PNG}")
        self.log("\n".join(lines))

    def _headline_change(self, first: dict | None, last: dict | None, result: TrainResult) -> str:
        """``pref accuracy 0.500 -> 0.750 · margin ...`` from the first and last eval rows, or from
        the first and last train rows when the evals do not carry them (online RL)."""
        keys = [k for k in self.headline_metrics if k != "loss"]
        if not keys:
            return ""
        where = ""
        if not (first and last and all(k in first and k in last for k in keys)):
            rows = [r for r in result.metrics if r.get("split") == "train" and all(k in r for k in keys)]
            if not rows:
                return ""
            first, last = rows[0], rows[-1]
            where = f" (training steps {first['step']} -> {last['step']})"
        parts = [f"{metric_label(k)} {first[k]:.3f} -> {last[k]:.3f}" for k in keys
                 if isinstance(first.get(k), (int, float)) and isinstance(last.get(k), (int, float))]
        return " · ".join(parts) + where if parts else ""


def _previous_evals(output: Path) -> list[dict]:
    from lazarus.training.metrics import read_metrics

    path = output / METRICS_FILE
    if not path.exists():
        return []
    return [r for r in read_metrics(path) if r.get("split") == "eval"]
