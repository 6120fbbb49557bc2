"""The trainer base: one loop that every trainer (sft, dpo, grpo, ppo ...) shares.

A trainer subclasses :class:`Trainer`, sets ``config_class`` (a :class:`TrainingConfig` subclass
with its own fields) and ``data_format``, and implements two things:

- :meth:`Trainer.batch_arrays`: turn one batch from the data layer into a named tree, a dict
  ``{name: mx.array}`` (``{"ids": ..., "loss_mask": ...}``);
- :meth:`Trainer.loss`: ``loss(model, **arrays) -> (total, count)`` (the batch's names are its
  keyword arguments): the *sum* of the per-item losses
  of the batch and how many items they cover (tokens for SFT, pairs for DPO ...). It may return a
  third element, a dict ``{metric name: sum over the same items}`` (``rewards/margin`` ...): the
  base logs each as its mean over the items of the logging window, in train and eval rows alike.

The base does the rest: loading the model and applying the adapter, data sharding by rank,
gradient accumulation, averaging over ranks, clipping, AdamW with a schedule, compiled steps,
evaluation, progress, metrics, checkpoints and resume. Because losses are returned as sums with
their counts, the loss of a step is the exact mean over all items of all micro-batches of all
ranks, whatever the padding or the split.

Optional hooks: :meth:`Trainer.setup` (after the model is ready: build a reference model ...),
:meth:`Trainer.tokenize` (turn records into examples).

Hooks for online RL (the defaults keep supervised trainers exactly as they are):

- :meth:`Trainer.next_batch` ``(batches, step, micro)``: where the ``micro``-th micro-batch of the
  step after ``step`` comes from (default ``next(batches)``). An RL trainer generates rollouts here
  and may hand the same rollouts to several optimizer steps (``num_iterations``).
- :meth:`Trainer.can_checkpoint`: False while rollouts are still in use; a checkpoint due then
  (``save_interval``, Ctrl-C) is written after the first step at which it is True again, so a
  resumed run never needs rollouts that were not saved.
- :attr:`Trainer.window_seconds`: the seconds of training steps in the logging window, set before
  :meth:`Trainer.extra_metrics` is called (to split it into generation / scoring / update).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map, tree_unflatten

from lazarus.errors import LazarusError
from lazarus.training import checkpoint as ckpt
from lazarus.training.adapter_setup import AdapterSetup
from lazarus.training.callbacks import Callbacks, plugin_callbacks
from lazarus.training.config import TrainingConfig, resolve_warmup
from lazarus.training.data_setup import DataSetup
from lazarus.training.display import LOSS_PNG, METRICS_FILE, TrainerDisplay, _previous_evals
from lazarus.training.distributed import World, init_world
from lazarus.training.guard import RunGuard, device_memory_bytes, generation_bytes  # noqa: F401  (importable here)
from lazarus.training.metrics import MetricsLog, plot_loss_curve
from lazarus.training.optimizer import build_optimizer
from lazarus.training.run_state import TrainResult, _new_window, _StopRequest, metric_means  # noqa: F401
from lazarus.training.schedules import learning_rate_at
from lazarus.training.weights import WeightsIO, stored_config  # noqa: F401  (importable here)


class Trainer(AdapterSetup, DataSetup, WeightsIO, RunGuard, TrainerDisplay):
    """Base class of trainers. See the module docstring for what a subclass implements.

    ``name`` is the registry name (``sft``); ``data_format`` the kind of records it reads
    (``sft``, ``preference``, ``prompt``), passed to :func:`lazarus.data.records.load_splits`.
    """

    name: ClassVar[str] = "trainer"
    config_class: ClassVar[type] = TrainingConfig
    data_format: ClassVar[str] = "sft"
    #: pad batch lengths to a multiple of this (fewer distinct shapes to compile)
    pad_to_multiple: ClassVar[int] = 8
    #: the metric keys that say whether the run learns: shown on the progress bar, in the eval lines,
    #: the summary, loss.png and a recipe's run table (``loss`` is shown only when listed here)
    headline_metrics: ClassVar[tuple[str, ...]] = ("loss",)
    #: the y label of the loss in loss.png (default: "NAME loss")
    loss_label: ClassVar[str] = ""

    def __init__(self, config: TrainingConfig, *, world: World | None = None, console=None,
                 progress: bool = True, callbacks=()) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        from lazarus.training.config import check_numbers

        try:
            check_numbers(config)  # nan/inf or absurd counts given through Python
        except ValueError as exc:
            raise LazarusError(f"invalid training setting: {exc}") from None
        self.config = config
        self.world = world or init_world()
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        self.console = console if self.world.is_main else None
        self.show_progress = progress and self.world.is_main
        self.output = Path(config.output)
        # the model and what is trained (load() / apply_adapter())
        self.model = None
        self.tokenizer = None
        self.model_config: dict = {}
        self.adapter_config = None
        self.num_trainable = 0
        self.optimizer = None
        # the data (load_data())
        self.train_examples = None
        self.valid_examples = None
        self.train_batches = None
        self.pad_id = 0
        # the run (train())
        #: callbacks given here; plugins' (register_training_callbacks) join them when the run starts
        self.callbacks = Callbacks(callbacks)
        self.eval_metrics: dict[str, float] = {}  #: the last evaluation's extra metrics (means)
        self.eval_batches_done: int | None = None  #: validation batches the last evaluation used
        self.window_seconds: float | None = None  #: seconds of training steps in the logging window
        self._result: TrainResult | None = None  #: the run's result so far (the guard names its checkpoint)
        self._lock = None  #: the output's OutputLock while the run holds it
        self._bar = None  #: the training progress bar while it is shown

    def batch_arrays(self, batch, training: bool = True) -> dict[str, mx.array]:
        """One batch of the data layer as a named tree ``{name: mx.array}``: the keyword arguments
        of :meth:`loss` (``training=False`` for a validation batch)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, *args: Any, **arrays: Any) -> tuple:
        """``(sum of losses, number of items)`` for one batch, both scalar arrays, optionally
        followed by a dict of summed extra metrics over the same items. A metric ``NAME`` with an
        entry ``NAME:count`` is divided by that count instead (e.g. a token mean next to a
        per-sequence loss); the ``:count`` entries are not logged."""
        raise NotImplementedError

    def _loss_parts(self, model, arrays) -> tuple[mx.array, mx.array, dict]:
        # a named tree is passed by name; a tuple (trainers written before 0.1's named batches) in order
        out = self.loss(model, **arrays) if isinstance(arrays, dict) else self.loss(model, *arrays)
        return (out[0], out[1], out[2]) if len(out) == 3 else (out[0], out[1], {})

    def micro_step(self, step, batch) -> tuple:
        """``(total, count, aux, grads)`` of one micro-batch: ``step(self.batch_arrays(batch))``. A
        trainer may run ``step`` on parts of the batch and sum what they return (GRPO scores its
        rollouts a few rows at a time, to bound the activations kept for the backward pass)."""
        return step(self.batch_arrays(batch))

    def batch_tokens(self, batch) -> int:
        """Real (unpadded) tokens in a batch, for throughput; filler rows do not count."""
        lengths = getattr(batch, "lengths", None)
        if lengths is None:
            return 0
        return int(lengths[batch.indices >= 0].sum())

    def extra_metrics(self) -> dict:
        """Extra fields for the next train row of metrics.jsonl (e.g. mean reward of an RL trainer);
        called on every rank at each log step, so it may use ``self.world.all_sum``."""
        return {}

    def setup(self) -> None:
        """Called once the model, tokenizer and adapter are ready (and weights restored on resume)."""

    def next_batch(self, batches, step: int, micro: int):
        """The ``micro``-th micro-batch of the optimizer step that follows ``step`` completed steps;
        default ``next(batches)``. RL trainers roll out here."""
        return next(batches)

    def can_checkpoint(self) -> bool:
        """Whether the state after the current step is complete in a checkpoint (default True)."""
        return True

    def _build_steps(self):
        """``(micro_step, apply_step, eval_step)``, compiled (:func:`lazarus.training.steps.build_steps`)."""
        from lazarus.training.steps import build_steps

        return build_steps(self)

    def evaluate(self, eval_step=None) -> float | None:
        """Mean loss over ``eval_batches`` validation batches (all ranks together); None without
        a validation split."""
        if self.valid_examples is None or not len(self.valid_examples):
            return None
        eval_step = eval_step or (lambda arrays: self._loss_parts(self.model, arrays))
        iterator = self._iterator(self.valid_examples, shuffle=False)
        limit = self.eval_batch_limit
        planned = iterator.batches_per_epoch(0) if limit < 0 else min(limit, iterator.batches_per_epoch(0))
        aux: dict[str, mx.array] = {}
        total, count = mx.array(0.0), mx.array(0.0)
        done = 0
        self.model.eval()
        try:
            with self._eval_progress(planned) as advance:
                for index, batch in enumerate(iterator.epoch()):
                    if 0 <= limit <= index:
                        break
                    batch_total, batch_count, batch_aux = eval_step(self.batch_arrays(batch, training=False))
                    total, count = total + batch_total, count + batch_count
                    aux = {k: aux.get(k, 0.0) + v for k, v in batch_aux.items()}
                    mx.eval(total, count, aux)
                    done += 1
                    advance()
        finally:
            self.model.train()
        self.eval_batches_done = done
        total, count, aux = self.world.all_sum((total, count, aux))
        denominator = max(count.item(), 1.0)
        #: the eval row's extra metrics (means over the evaluated items), written next to its loss
        self.eval_metrics = metric_means(aux, denominator)
        return float(total.item() / denominator)

    def _eval_row(self, step: int, loss: float) -> dict:
        return {"split": "eval", "step": step, "loss": loss, **self.eval_metrics,
                "eval_batches": self.eval_batches_done}

    def train(self) -> TrainResult:
        """Run training to the end (or until Ctrl-C) and return what it produced."""
        try:
            return self._train()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _train(self) -> TrainResult:
        config = self.config
        resume_from = ckpt.find_checkpoint(config.resume) if config.resume else None
        state: dict[str, Any] = ckpt.read_state(resume_from) if resume_from else {}
        if state and state["trainer"] != self.name:
            raise LazarusError(f"--resume {resume_from}: this checkpoint was written by the "
                               f"{state['trainer']!r} trainer; resume it with `lazarus train {state['trainer']}`")

        self._check_output(resuming=resume_from is not None)
        if resume_from is not None:
            self._check_same_base(resume_from)
        if self.model is None:
            self.load()
        self.load_data()
        self._claim_output(resuming=resume_from is not None)
        total_steps = self.total_steps()
        self.optimizer = build_optimizer(config, total_steps)
        self.optimizer.init(self.model.trainable_parameters())
        start_step, counters = self._restore(resume_from, state, total_steps)
        self.setup()
        mx.eval(self.model.parameters(), self.optimizer.state)
        self.callbacks.callbacks.extend(plugin_callbacks(self))

        metrics = self._open_metrics(resume_from, start_step)
        result = TrainResult(output=self.output, step=start_step, total_steps=total_steps,
                             checkpoint=resume_from)
        self._result = result  # the divergence guard names its last good checkpoint
        self._describe(total_steps, start_step)
        micro_step, apply_step, eval_step = self._build_steps()

        if start_step == 0 and self.valid_examples is not None:
            loss = self._evaluate_and_log(0, eval_step, metrics, result)
            result.first_eval_loss = loss
            self._guard_eval(0, loss, None, result)
            self.log(self._eval_line(0, loss))
        else:
            result.first_eval_loss = next((r["loss"] for r in _previous_evals(self.output) if r["step"] == 0),
                                          None)
        self._loop(start_step, total_steps, counters, metrics, result, (micro_step, apply_step, eval_step))
        if result.interrupted:
            self._report_interrupt(result, total_steps)
            result.metrics = metrics.rows
            return result
        self._finish(result, counters, metrics, eval_step)
        return result

    def _restore(self, resume_from: Path | None, state: dict, total_steps: int) -> tuple[int, dict]:
        """``(start step, counters)``: a resumed run's weights, optimizer state, data position and
        random state back from its checkpoint; a new run seeds its dropout noise."""
        counters = {"trained_tokens": 0, "elapsed": 0.0}
        if resume_from is None:
            mx.random.seed(self.config.seed + 1 + self.world.rank)  # dropout noise differs between ranks
            return 0, counters
        start_step = int(state["step"])
        self.read_weights(resume_from)
        saved = ckpt.read_optimizer_state(resume_from)
        self.optimizer.state = tree_unflatten(list(saved.items()))
        self.optimizer.init(self.model.trainable_parameters())  # fills nothing, marks initialised
        from lazarus.data.batching import BatchPosition

        self.train_batches.seek(BatchPosition.from_dict(state["data_position"]))
        keys = state.get("rng_per_rank") or [state["rng"]]
        # each rank gets its own dropout stream back (a new rank count reuses them in turn)
        ckpt.set_rng_state(keys[self.world.rank % len(keys)])
        counters.update(state.get("counters", {}))
        self.log(f"Resuming from {resume_from} at step {start_step}/{total_steps}")
        return start_step, counters

    def _open_metrics(self, resume_from: Path | None, start_step: int) -> MetricsLog:
        """metrics.jsonl: a fresh log for a new run; a resumed one drops the rows after its step and
        moves the abandoned run's later checkpoints aside."""
        metrics = MetricsLog(self.output / METRICS_FILE, enabled=self.world.is_main)
        if self.world.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            if resume_from is not None:
                metrics.drop_after(start_step)
                moved, aside = ckpt.set_aside_later(self.output / ckpt.CHECKPOINTS_DIR, start_step)
                if moved:
                    self.log(f"[yellow]Resuming at step {start_step}: moved the abandoned run's later "
                             f"checkpoints ({', '.join(moved)}) to {aside}[/]")
            else:
                (self.output / METRICS_FILE).unlink(missing_ok=True)  # a fresh run starts a fresh log
        return metrics

    def _evaluate_and_log(self, step: int, eval_step, metrics: MetricsLog, result: TrainResult) -> float | None:
        """Evaluate, write the eval row (callbacks' ``on_eval``) and keep the loss as the last one."""
        loss = self.evaluate(eval_step)
        if loss is None:
            return None
        row = self._eval_row(step, loss)
        metrics.write(row)
        result.last_eval_loss = loss
        self.callbacks.fire("on_eval", self, row)
        return loss

    def _loop(self, step: int, total_steps: int, counters: dict, metrics: MetricsLog, result: TrainResult,
              steps: tuple) -> None:
        """Optimizer steps until ``total_steps`` or a stop request (which saves a checkpoint)."""
        config = self.config
        micro_step, apply_step, eval_step = steps
        batches = iter(self.train_batches)
        window = _new_window()
        save_due = False
        progress = self._progress(total_steps, step)
        with _StopRequest(self.console) as stop, progress:
            task = progress.add_task("train", total=total_steps, completed=step, metrics="-", tps="-",
                                     lr=f"{learning_rate_at(step, **self._schedule_args(total_steps)):.2e}")
            while step < total_steps:
                step_start = time.perf_counter()
                norm, step_total, step_count, step_tokens = self._step(batches, step, micro_step, apply_step, window)
                step += 1
                self._guard_step(step, step_total, step_count, norm, metrics, result)
                step_seconds = time.perf_counter() - step_start
                counters["elapsed"] += step_seconds
                counters["trained_tokens"] += step_tokens
                window["seconds"] += step_seconds
                window["total"] = window["total"] + step_total
                window["count"] = window["count"] + step_count
                window["tokens"] += step_tokens
                window["steps"] += 1
                result.step = step
                self.callbacks.fire("on_step", self, step, float(step_total.item()) / max(float(step_count.item()), 1.0))

                if step % self.log_every == 0 or step == total_steps:
                    row = self._train_row(step, window, norm, total_steps)
                    metrics.write(row)
                    if not math.isfinite(row["loss"]):  # ranks' losses summed: the same on every rank
                        raise self._diverged(step, f"the loss is {row['loss']}", result)
                    result.last_train_loss = row["loss"]
                    progress.update(task, metrics=self._headline_text(row), tps=f"{row['tokens_per_second']:.0f}",
                                    lr=f"{row['learning_rate']:.2e}")
                    self.callbacks.fire("on_log", self, row)
                    window = _new_window()
                progress.update(task, completed=step)

                if config.eval_interval and step % config.eval_interval == 0 and step < total_steps:
                    loss = self._evaluate_and_log(step, eval_step, metrics, result)
                    if loss is not None:
                        self._guard_eval(step, loss, result.first_eval_loss, result)
                        if self.console is not None:
                            progress.console.print(self._eval_line(step, loss))

                stop_now = self.world.any(stop.requested)
                if stop_now and step < total_steps and self.can_checkpoint():
                    checkpoint = self._checkpoint(step, counters, result)
                    result.interrupted = True
                    result.resume_command = self.resume_command(checkpoint)
                    break
                save_due = save_due or bool(config.save_interval and step % config.save_interval == 0)
                if save_due and step < total_steps and self.can_checkpoint():
                    self._checkpoint(step, counters, result)
                    save_due = False
        result.step = step

    def _step(self, batches, step: int, micro_step, apply_step, window: dict) -> tuple:
        """One optimizer step over ``grad_accumulation`` micro-batches: ``(grad norm, summed loss,
        item count, real tokens)``; the micro-batches' metrics are added to the logging window."""
        config = self.config
        grads_sum, step_total, step_count, step_tokens = None, mx.array(0.0), mx.array(0.0), 0
        for micro in range(config.grad_accumulation):
            batch = self.next_batch(batches, step, micro)
            step_tokens += self.batch_tokens(batch)
            total, count, aux, grads = self.micro_step(micro_step, batch)
            grads_sum = grads if grads_sum is None else tree_map(mx.add, grads_sum, grads)
            step_total, step_count = step_total + total, step_count + count
            window["aux"] = {k: window["aux"].get(k, 0.0) + v for k, v in aux.items()}
            if config.grad_accumulation > 1:
                mx.eval(grads_sum, step_total, step_count, window["aux"])
        norm = apply_step(grads_sum, step_count)
        mx.eval(self.model.state, self.optimizer.state, step_total, step_count, norm, window["aux"])
        return norm, step_total, step_count, step_tokens

    def _checkpoint(self, step: int, counters: dict, result: TrainResult) -> Path:
        result.checkpoint = checkpoint = self.save_checkpoint(step, counters)
        self.callbacks.fire("on_checkpoint", self, step, checkpoint)
        return checkpoint

    def _finish(self, result: TrainResult, counters: dict, metrics: MetricsLog, eval_step) -> None:
        """The end of a finished run: the last evaluation, the last checkpoint, the weights in the
        output directory, loss.png and the summary."""
        config, step = self.config, result.step
        if self.valid_examples is not None:
            loss = self._evaluate_and_log(step, eval_step, metrics, result)
            self._guard_eval(step, loss, result.first_eval_loss, result)
        self._checkpoint(step, counters, result)
        self.save_final(step)
        if self.world.is_main:
            try:
                plot_loss_curve(self.output / METRICS_FILE, self.output / LOSS_PNG,
                                loss_label=self.loss_label or f"{self.name} loss", headline=self.headline_metrics,
                                title=f"{self.name} · {Path(config.model or '').name} · {config.fine_tune_type}")
            except Exception as exc:  # a plot must never lose a finished run
                self.log(f"[yellow]could not draw {LOSS_PNG}: {exc}[/]")
        result.metrics = metrics.rows
        self._summary(result)

    def _schedule_args(self, total_steps: int) -> dict:
        c = self.config
        return {"peak": c.learning_rate, "kind": c.lr_schedule, "warmup_steps": resolve_warmup(c, total_steps),
                "total_steps": total_steps, "end": c.min_learning_rate}

    def _train_row(self, step: int, window: dict, norm, total_steps: int) -> dict:
        # every rank's real tokens (a rank's share of a batch need not hold half its tokens)
        total, count, aux, tokens = self.world.all_sum((window["total"], window["count"], window["aux"],
                                                        mx.array(float(window["tokens"]))))
        tokens = float(tokens.item())
        elapsed = max(window["seconds"], 1e-9)
        self.window_seconds = elapsed
        return {
            "split": "train", "step": step,
            "loss": float(total.item() / max(count.item(), 1.0)),
            # the rate the optimizer used for this step (the schedule is read before the step counter moves)
            "learning_rate": learning_rate_at(step - 1, **self._schedule_args(total_steps)),
            "grad_norm": float(norm.item()),
            "tokens_per_second": tokens / elapsed,
            "seconds": elapsed,  # time in training steps since the previous row (no eval, no saving)
            "loss_items": float(count.item()),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "epoch": self._epochs_done(),
            **metric_means(aux, count.item()),
            **self.extra_metrics(),
        }

    def _epochs_done(self) -> float:
        """Passes over the training data so far (fractional: 1.5 = half-way through the second)."""
        position = self.train_batches.position
        return round(position.epoch + position.index / self.train_batches.batches_per_epoch(position.epoch), 4)


def run_trainer(trainer_cls: type[Trainer], config: TrainingConfig, **kwargs) -> TrainResult:
    """Build ``trainer_cls(config)`` and train it; the Python entry point behind ``lazarus train``."""
    return trainer_cls(config, **kwargs).train()
