"""The trainer base: one loop that every trainer (sft, dpo, grpo, ppo ...) shares.

A trainer subclasses :class:`Trainer`, sets ``config_class`` (a :class:`TrainingConfig` subclass
with its own fields) and ``data_format``, and implements two things:

- :meth:`Trainer.batch_arrays`: turn one batch from the data layer into a tuple of ``mx.array``;
- :meth:`Trainer.loss`: ``loss(model, *arrays) -> (total, count)``: the *sum* of the per-item losses
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

import contextlib
import functools
import math
import shlex
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from lazarus.errors import LazarusError, TrainingDiverged
from lazarus.training import checkpoint as ckpt
from lazarus.training.config import TrainingConfig, resolve_eval_batches, resolve_log_interval, resolve_warmup
from lazarus.training.distributed import World, init_world
from lazarus.training.metrics import MetricsLog, headline_text, metric_label, plot_loss_curve
from lazarus.training.optimizer import build_optimizer, clip_by_global_norm
from lazarus.training.schedules import learning_rate_at

METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss.png"


@attrs.define
class TrainResult:
    """What a finished (or interrupted) run produced."""

    output: Path
    step: int  #: optimizer steps done
    total_steps: int
    interrupted: bool = False
    checkpoint: Path | None = None  #: the last resumable checkpoint written
    first_eval_loss: float | None = None
    last_eval_loss: float | None = None
    last_train_loss: float | None = None
    resume_command: str | None = None
    metrics: list[dict] = attrs.Factory(list)


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to save and stop after the current
    step (state is only consistent between steps); a second one aborts at once."""

    def __init__(self, console) -> None:
        self.requested = False
        self.console = console
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.console is not None:
            self.console.print("[yellow]Stopping after this step and saving a checkpoint "
                               "(press Ctrl-C again to quit without saving)...[/]")


def metric_means(aux: dict, count: float) -> dict[str, float]:
    """Logged means of summed metrics: each over the loss's item ``count``, or over its own summed
    ``NAME:count`` when the loss returned one (see :meth:`Trainer.loss`)."""
    means = {}
    for name, value in aux.items():
        if name.endswith(":count"):
            continue
        own = aux.get(f"{name}:count")
        denominator = float(own.item()) if own is not None else float(count)
        means[name] = float(value.item()) / max(denominator, 1.0)
    return means


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer:
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
                 progress: bool = True) -> None:
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
        self.model = None
        self.tokenizer = None
        self.model_config: dict = {}
        self.optimizer = None
        self.adapter_config = None

    # -- what a subclass implements ------------------------------------------------------------
    def batch_arrays(self, batch, training: bool = True) -> tuple:
        """The ``mx.array`` arguments of :meth:`loss` for one batch of the data layer
        (``training=False`` for a validation batch)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, *arrays) -> tuple:
        """``(sum of losses, number of items)`` for one batch, both scalar arrays, optionally
        followed by a dict of summed extra metrics over the same items. A metric ``NAME`` with an
        entry ``NAME:count`` is divided by that count instead (e.g. a token mean next to a
        per-sequence loss); the ``:count`` entries are not logged."""
        raise NotImplementedError

    def _loss_parts(self, model, *arrays) -> tuple[mx.array, mx.array, dict]:
        out = self.loss(model, *arrays)
        return (out[0], out[1], out[2]) if len(out) == 3 else (out[0], out[1], {})

    def micro_step(self, step, batch) -> tuple:
        """``(total, count, aux, grads)`` of one micro-batch: ``step(*self.batch_arrays(batch))``. A
        trainer may run ``step`` on parts of the batch and sum what they return (GRPO scores its
        rollouts a few rows at a time, to bound the activations kept for the backward pass)."""
        return step(*self.batch_arrays(batch))

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

    def tokenize(self, dataset):
        """Records -> examples (default: :func:`lazarus.data.examples.tokenize` with the config)."""
        from lazarus.data.examples import tokenize

        return tokenize(dataset, self.tokenizer, max_seq_length=self.config.max_seq_length,
                        mask_prompt=getattr(self.config, "mask_prompt", True))

    # -- helpers -------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print on rank 0; long lines are left to the terminal (rich would break paths apart)."""
        if self.console is not None:
            self.console.print(message, soft_wrap=True)

    @property
    def full_fine_tune(self) -> bool:
        return self.config.fine_tune_type == "full"

    # -- model and adapter ---------------------------------------------------------------------
    def load(self) -> None:
        """Load the base model and tokenizer and apply the configured adapter."""
        from lazarus.loader import load_model

        config = self.config
        if not config.model:
            raise LazarusError("no model given: pass --model PATH (a Hugging Face layout directory)")
        self.model, self.tokenizer, self.model_config = load_model(config.model, dtype=config.dtype)
        self.apply_adapter()

    def apply_adapter(self) -> None:
        """Put the trainable adapter on the model: the one in ``--adapter DIR`` (training continues
        its weights), else a fresh one of ``--fine-tune-type``."""
        from lazarus.adapters import AdapterConfig, LoraParameters, apply_adapter
        from lazarus.training.config import resolve_num_layers

        config = self.config
        if config.adapter:
            self._start_from_adapter(config.adapter)
            return
        # one rule for every path: not given = min(16, blocks), -1 = all, too many = an error
        num_layers = resolve_num_layers(config.num_layers, len(self.model.blocks))
        keys = self._resolve_targets(config.lora_targets, num_layers) if config.lora_targets else None
        try:
            lora = LoraParameters(rank=config.rank, scale=config.scale, dropout=config.dropout, keys=keys)
        except ValueError as exc:
            raise LazarusError(f"invalid adapter setting: {exc}") from None
        self.adapter_config = AdapterConfig(fine_tune_type=config.fine_tune_type, num_layers=num_layers,
                                            lora_parameters=lora)
        mx.random.seed(config.seed)  # adapter initialisation is part of the run's seed
        apply_adapter(self.model, self.adapter_config)
        self._count_trainable()

    def _start_from_adapter(self, path: str) -> None:
        """Load a saved adapter to continue training it; its own settings replace --fine-tune-type,
        --rank, --scale, --num-layers and --lora-targets (a note says so when they disagree)."""
        from lazarus.adapters import load_adapter
        from lazarus.checkpoints.atomic import recover_output

        if not recover_output(path, "--adapter").exists():
            raise LazarusError(f"--adapter {path}: no such adapter directory (to choose the adapter *type*, "
                               "use --fine-tune-type lora|dora|full)")
        config = self.config
        self.adapter_config = load_adapter(self.model, path)
        params = self.adapter_config.lora_parameters
        saved = {"fine_tune_type": self.adapter_config.fine_tune_type, "rank": params.rank,
                 "scale": params.scale}
        defaults = {f.name: f.default for f in attrs.fields(type(config))}
        differing = [f"--{k.replace('_', '-')} {getattr(config, k)} (the adapter has {v})"
                     for k, v in saved.items() if getattr(config, k) != defaults[k] and getattr(config, k) != v]
        if differing:
            self.log(f"[yellow]--adapter {path} keeps its own settings; ignoring {', '.join(differing)}[/]")
        config.fine_tune_type = self.adapter_config.fine_tune_type
        from lazarus.loader import warn_if_other_base

        warn_if_other_base(path, getattr(self.model, "source", None))
        self._count_trainable()

    def _count_trainable(self) -> None:
        self.model.train()
        trainable = sum(v.size for _, v in tree_flatten(self.model.trainable_parameters()))
        if trainable == 0:
            raise LazarusError(f"the {self.config.fine_tune_type} adapter left nothing to train; check "
                               "--lora-targets and --num-layers")
        self.num_trainable = trainable

    def _resolve_targets(self, targets: tuple[str, ...], num_layers: int) -> tuple[str, ...]:
        """Expand short names (``q_proj``) to block-relative paths (``self_attn.q_proj``) of the last
        ``num_layers`` blocks."""
        from lazarus.adapters.base import default_keys, is_linear, select_blocks

        available = default_keys(select_blocks(self.model, num_layers))
        root_modules = dict(self.model.named_modules())
        resolved: list[str] = []
        for target in targets:
            matches = [k for k in available if k == target or k.endswith("." + target)]
            if not matches and target in root_modules and is_linear(root_modules[target]):
                matches = [target]  # a layer outside the blocks, such as lm_head
            if not matches:
                raise LazarusError(f"--lora-targets: {target!r} matches no linear layer of the adapted "
                                   f"blocks; available: {', '.join(available)}")
            resolved.extend(m for m in matches if m not in resolved)
        return tuple(resolved)

    def write_weights(self, directory: Path, *, step: int) -> None:
        """Write the trained weights into ``directory`` through the checkpoint-format plugins:
        ``mlx-lm`` for adapters, ``hf`` (whole model, Hugging Face layout) for a full fine-tune."""
        from lazarus import checkpoints
        from lazarus.adapters import adapter_weights

        if self.full_fine_tune:
            checkpoints.save("hf", directory, model=self.model, source=self.config.model,
                             config=self.model_config if isinstance(self.model_config, dict) else None,
                             provenance=self.provenance(step))
        else:
            checkpoints.save("mlx-lm", directory, weights=adapter_weights(self.model, self.adapter_config),
                             config=self._adapter_config_for_disk(), model=self.model,
                             provenance=self.provenance(step))

    def _adapter_config_for_disk(self):
        # mlx-lm keeps its training options in adapter_config.json; we record ours the same way
        stored = stored_config(self.config)
        extra = {"trainer": self.name, "model": stored["model"], "data": stored["data"],
                 "seed": self.config.seed, "learning_rate": self.config.learning_rate,
                 "batch_size": self.config.batch_size}
        return attrs.evolve(self.adapter_config, extra={**self.adapter_config.extra, **extra})

    def read_weights(self, checkpoint: Path) -> None:
        """Load the trained weights saved in a checkpoint directory into the (adapted) model."""
        from lazarus import checkpoints

        expected = dict(tree_flatten(self.model.trainable_parameters()))
        if self.full_fine_tune:
            saved_model, _, _ = checkpoints.load("hf", checkpoint)
            weights = {k: v for k, v in tree_flatten(saved_model.parameters()) if k in expected}
        else:
            weights = checkpoints.load("mlx-lm", checkpoint).weights
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise LazarusError(f"{checkpoint}: the checkpoint lacks {missing[0]} (and {len(missing) - 1} "
                               "more); it was written with other adapter settings than this run's")
        for key, value in weights.items():
            if key in expected and tuple(value.shape) != tuple(expected[key].shape):
                raise LazarusError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, this run expects "
                                   f"{tuple(expected[key].shape)}; resume with the settings it was saved with")
        self.model.load_weights([(k, v) for k, v in weights.items() if k in expected], strict=False)

    def provenance(self, step: int) -> dict:
        """Extra ``lazarus.json`` fields of a checkpoint: trainer, step, settings, hashed data files."""
        data_files = []
        if self.config.data:
            data = Path(self.config.data)
            data_files = [data] if data.is_file() else sorted(
                p for p in (data / "train.jsonl", data / "valid.jsonl") if p.is_file())
        return {"trainer": self.name, "step": step, "training": stored_config(self.config),
                "data_files": data_files}

    # -- data ----------------------------------------------------------------------------------
    def load_data(self) -> None:
        from lazarus.data.examples import pad_id_for
        from lazarus.data.records import load_splits

        config = self.config
        if not config.data:
            raise LazarusError("no data given: pass --data PATH (a JSONL file or a directory with train.jsonl)")
        splits = load_splits(config.data, format=self.data_format)
        self.train_examples = self.tokenize(splits.train)
        self.valid_examples = self.tokenize(splits.valid) if splits.valid is not None and len(splits.valid) else None
        if not len(self.train_examples):
            raise LazarusError(f"{config.data}: no training examples left after tokenisation "
                               f"(max_seq_length={config.max_seq_length})")
        self.pad_id = pad_id_for(self.tokenizer)
        if config.batch_size % self.world.size:
            raise LazarusError(f"--batch-size {config.batch_size} is the global batch and must divide evenly "
                               f"over {self.world.size} ranks")
        self.train_batches = self._iterator(self.train_examples, shuffle=True)

    def _iterator(self, examples, *, shuffle: bool):
        from lazarus.data.batching import BatchIterator

        return BatchIterator(examples, batch_size=self.config.batch_size, seed=self.config.seed,
                             shuffle=shuffle, pad_id=self.pad_id, pad_to_multiple=self.pad_to_multiple,
                             rank=self.world.rank, world_size=self.world.size)

    def total_steps(self) -> int:
        """Optimizer steps of the run: max_steps and/or epochs (whichever ends first)."""
        config = self.config
        candidates = []
        if config.max_steps:
            candidates.append(config.max_steps)
        if config.epochs:
            per_epoch = self.train_batches.batches_per_epoch(0)
            candidates.append(max(1, math.ceil(config.epochs * per_epoch / config.grad_accumulation)))
        return min(candidates) if candidates else config.DEFAULT_STEPS

    # -- compiled steps ------------------------------------------------------------------------
    def _build_steps(self):
        model, optimizer, world, config = self.model, self.optimizer, self.world, self.config
        loss_and_grad = nn.value_and_grad(model, self._loss_parts)

        names: list[str] = []  # the metric names, read while tracing

        def packed_step(*arrays):
            (total, count, aux), grads = loss_and_grad(model, *arrays)
            # count and metrics leave as one stacked array: mx.compile (mlx 0.32) fails on a
            # value_and_grad step whose outputs repeat an array, or hold a node of the loss
            # (e.g. a loss's count that is also part of its total: "IndexError: _Map_base::at")
            names[:] = list(aux)
            return total, mx.stack([count.astype(mx.float32), *(aux[k].astype(mx.float32) for k in names)]), grads

        def micro_step(*arrays):
            total, scalars, grads = step(*arrays)
            return total, scalars[0], {k: scalars[i + 1] for i, k in enumerate(names)}, grads

        def apply_step(grads, count):
            # grads are sums over this rank's items: sum over ranks, divide by the global count
            grads, count = world.all_sum((grads, count))
            count = mx.maximum(count, 1)
            grads = tree_map(lambda g: g / count.astype(g.dtype), grads)
            grads, norm = clip_by_global_norm(grads, config.max_grad_norm)
            optimizer.update(model, grads)
            return norm

        def eval_step(*arrays):
            return self._loss_parts(model, *arrays)

        if config.compile:
            # value_and_grad swaps the parameters in and out of the model, so the model's state is
            # an output too; the random state carries dropout noise from step to step
            step = mx.compile(packed_step, inputs=[model.state, mx.random.state],
                              outputs=[model.state, mx.random.state])
        else:
            step = packed_step
        if config.compile:
            apply_step = mx.compile(apply_step, inputs=[model.state, optimizer.state],
                                    outputs=[model.state, optimizer.state])
            eval_step = mx.compile(eval_step, inputs=[model.state])
        return micro_step, apply_step, eval_step

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, eval_step=None) -> float | None:
        """Mean loss over ``eval_batches`` validation batches (all ranks together); None without
        a validation split."""
        if self.valid_examples is None or not len(self.valid_examples):
            return None
        eval_step = eval_step or (lambda *a: self._loss_parts(self.model, *a))
        iterator = self._iterator(self.valid_examples, shuffle=False)
        limit = self.eval_batch_limit
        planned = iterator.batches_per_epoch(0) if limit < 0 else min(limit, iterator.batches_per_epoch(0))
        total, count, aux = mx.array(0.0), mx.array(0.0), {}
        done = 0
        self.model.eval()
        try:
            with self._eval_progress(planned) as advance:
                for index, batch in enumerate(iterator.epoch()):
                    if 0 <= limit <= index:
                        break
                    batch_total, batch_count, batch_aux = eval_step(*self.batch_arrays(batch, training=False))
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
        return {"split": "eval", "step": step, "loss": loss, **getattr(self, "eval_metrics", {}),
                "eval_batches": getattr(self, "eval_batches_done", None)}

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run training to the end (or until Ctrl-C) and return what it produced."""
        try:
            return self._train()
        finally:
            if getattr(self, "_lock", None) is not None:
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
        start_step = 0
        counters = {"trained_tokens": 0, "elapsed": 0.0}
        if resume_from is not None:
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
        else:
            mx.random.seed(config.seed + 1 + self.world.rank)  # dropout noise differs between ranks
        self.setup()
        mx.eval(self.model.parameters(), self.optimizer.state)

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
        result = TrainResult(output=self.output, step=start_step, total_steps=total_steps,
                             checkpoint=resume_from)
        self._result = result  # the divergence guard names its last good checkpoint
        self._describe(total_steps, start_step)
        micro_step, apply_step, eval_step = self._build_steps()

        if start_step == 0 and self.valid_examples is not None:
            loss = self.evaluate(eval_step)
            metrics.write(self._eval_row(0, loss))
            result.first_eval_loss = result.last_eval_loss = loss
            self._guard_eval(0, loss, None, result)
            self.log(self._eval_line(0, loss))
        else:
            result.first_eval_loss = next((r["loss"] for r in _previous_evals(self.output) if r["step"] == 0),
                                          None)

        batches = iter(self.train_batches)
        window = _new_window()
        step = start_step
        save_due = False
        progress = self._progress(total_steps, start_step)
        with _StopRequest(self.console) as stop, progress:
            task = progress.add_task("train", total=total_steps, completed=start_step, metrics="-", tps="-",
                                     lr=f"{learning_rate_at(start_step, **self._schedule_args(total_steps)):.2e}")
            while step < total_steps:
                step_start = time.perf_counter()
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
                step += 1
                self._guard_step(step, step_total, step_count, norm, metrics, result)
                step_seconds = time.perf_counter() - step_start
                counters["elapsed"] += step_seconds
                window["seconds"] += step_seconds
                counters["trained_tokens"] += step_tokens
                window["total"] = window["total"] + step_total
                window["count"] = window["count"] + step_count
                window["tokens"] += step_tokens
                window["steps"] += 1

                if step % self.log_every == 0 or step == total_steps:
                    row = self._train_row(step, window, norm, total_steps)
                    metrics.write(row)
                    if not math.isfinite(row["loss"]):  # ranks' losses summed: the same on every rank
                        raise self._diverged(step, f"the loss is {row['loss']}", result)
                    result.last_train_loss = row["loss"]
                    progress.update(task, metrics=self._headline_text(row), tps=f"{row['tokens_per_second']:.0f}",
                                    lr=f"{row['learning_rate']:.2e}")
                    window = _new_window()
                progress.update(task, completed=step)

                if config.eval_interval and step % config.eval_interval == 0 and step < total_steps:
                    loss = self.evaluate(eval_step)
                    if loss is not None:
                        metrics.write(self._eval_row(step, loss))
                        result.last_eval_loss = loss
                        self._guard_eval(step, loss, result.first_eval_loss, result)
                        if self.console is not None:
                            progress.console.print(self._eval_line(step, loss))

                stop_now = self.world.any(stop.requested)
                if stop_now and step < total_steps and self.can_checkpoint():
                    result.checkpoint = self.save_checkpoint(step, counters)
                    result.interrupted = True
                    result.step = step
                    result.resume_command = self.resume_command(result.checkpoint)
                    break
                save_due = save_due or bool(config.save_interval and step % config.save_interval == 0)
                if save_due and step < total_steps and self.can_checkpoint():
                    result.checkpoint = self.save_checkpoint(step, counters)
                    save_due = False
        result.step = step
        if result.interrupted:
            if self.console is not None:
                self.console.print(f"[yellow]Interrupted at step {step}/{total_steps}.[/] Checkpoint saved to:")
                # never wrapped or styled: the user copies these lines
                self.console.print(f"  {result.checkpoint}", markup=False, highlight=False, soft_wrap=True)
                self.console.print("Resume with:")
                self.console.print(f"  {result.resume_command}", markup=False, highlight=False, soft_wrap=True)
            result.metrics = metrics.rows
            return result

        if self.valid_examples is not None:
            loss = self.evaluate(eval_step)
            metrics.write(self._eval_row(step, loss))
            result.last_eval_loss = loss
            self._guard_eval(step, loss, result.first_eval_loss, result)
        result.checkpoint = self.save_checkpoint(step, counters)
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
        return result

    # -- divergence guard ----------------------------------------------------------------------
    def _diverged(self, step: int, what: str, result: TrainResult | None = None) -> TrainingDiverged:
        """The error that stops a diverged run: the step, what was seen, the setting to lower and
        the last good checkpoint (nothing is saved or pruned for the bad step)."""
        checkpoint = result.checkpoint if result is not None else None
        kept = f"; the last good checkpoint is {checkpoint}" if checkpoint else "; no checkpoint was written"
        return TrainingDiverged(f"training diverged at step {step}: {what} -- lower --learning-rate "
                                f"(now {self.config.learning_rate:g}){kept}", step=step, checkpoint=checkpoint)

    def _guard_step(self, step: int, total, count, norm, metrics: MetricsLog, result: TrainResult) -> None:
        """Stop when this step's gradient norm (summed over ranks, so every rank agrees) or, on one
        process, its loss is not finite: the update has already spoiled the weights in memory."""
        grad_norm = float(norm.item())
        loss = float(total.item()) / max(float(count.item()), 1.0)
        if math.isfinite(grad_norm) and (self.world.distributed or math.isfinite(loss)):
            return
        metrics.write({"split": "train", "step": step, "loss": loss, "grad_norm": grad_norm, "diverged": True})
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
        raise self._diverged(step, what, result)

    def _guard_eval(self, step: int, loss: float | None, first: float | None, result: TrainResult) -> None:
        """Stop when an eval loss is not finite, or rises above max(1.5 x first, first + rise)."""
        if loss is None:
            return
        if not math.isfinite(loss):
            raise self._diverged(step, f"the eval loss is {loss}", result)
        rise = self.config.max_eval_loss_rise
        if first is None or not math.isfinite(first) or not rise:
            return
        limit = max(1.5 * first, first + rise)
        if loss > limit:
            raise self._diverged(step, f"eval loss {loss:.4f} rose from {first:.4f} at the start, above "
                                       f"{limit:.4f} (max(1.5 x first, first + --max-eval-loss-rise {rise:g}))",
                                 result)

    def _guard_weights(self, step: int) -> None:
        """Refuse to save weights that are not all finite (an update that overflowed)."""
        finite = mx.array(True)
        for _, value in tree_flatten(self.model.trainable_parameters()):
            finite = mx.logical_and(finite, mx.all(mx.isfinite(value)))
        if not bool(finite.item()):
            raise self._diverged(step, "the trained weights are no longer finite", getattr(self, "_result", None))

    def _check_same_base(self, checkpoint: Path) -> None:
        """Refuse to resume a run on another base model than the one its checkpoint was trained on."""
        from lazarus.loader import resolve_model_path, weight_files
        from lazarus.models.transformer import ModelSource
        from lazarus.provenance import recorded_base_differs

        model = self.config.model
        if not model:
            return
        if self.model is not None:
            source = getattr(self.model, "source", None)
        else:
            path = resolve_model_path(model)
            source = ModelSource(model=str(model), path=str(path), family="",
                                 weight_files=tuple(str(f) for f in weight_files(path)))
        other = recorded_base_differs(checkpoint, source)
        if other is not None:
            raise LazarusError(f"--resume {checkpoint}: this run was trained on {other}, not on --model {model}; "
                               f"resume it on its own base, or start a new run on {model} with --adapter "
                               f"{checkpoint} (a warning says when its shapes fit another base)")

    def check_memory(self, needed: int, what: str, lower: str) -> None:
        """Refuse up front what cannot fit in the device's memory (rather than be killed for it)."""
        available = device_memory_bytes()
        if available and needed > available:
            raise LazarusError(f"{what} needs at least {needed / 1e9:.1f} GB, more than the {available / 1e9:.1f} GB "
                               f"of this device; lower {lower}")

    def _check_not_model(self, output: Path) -> None:
        """Refuse an output directory that is a model this run reads (its files would be replaced)."""
        for option in ("model", "ref_model"):
            value = getattr(self.config, option, None)
            if not value or not Path(value).expanduser().is_dir():
                continue
            if Path(value).expanduser().resolve() == output.resolve():
                raise LazarusError(f"--output {output} is the --{option.replace('_', '-')} directory; training "
                                   "would overwrite that model's files: choose another --output")

    def _check_output(self, resuming: bool) -> None:
        """Before the model loads, without writing anything: refuse an output that cannot be written,
        that is a model this run reads, that a live run holds, or that holds an earlier run (its
        checkpoints would be pruned and its metrics lost) unless ``overwrite`` is set. An output an
        interrupted save left hidden is restored first."""
        from lazarus.checkpoints.atomic import recover_output
        from lazarus.paths import OutputLock, check_output_path

        check_output_path(self.output, kind="dir", option="--output")
        self._check_not_model(self.output)
        recover_output(self.output, "--output")
        if self.world.is_main:
            OutputLock(self.output).check()
        previous = self.output / ckpt.CHECKPOINTS_DIR
        if resuming or not previous.exists() or self.config.overwrite:
            return
        raise LazarusError(f"{self.output} already holds a training run ({previous}); continue it with "
                           f"--resume {self.output}, start afresh there with --overwrite, or choose "
                           "another --output")

    def _claim_output(self, resuming: bool) -> None:
        """Once the model and data are ready: take the output's lock (one live run per output
        directory; a dead run's lock is taken over with a note), then, for --overwrite, delete the
        earlier run's checkpoints and metrics (never a live run's: its lock is refused first)."""
        if self.world.is_main:
            from rich.markup import escape

            from lazarus.paths import OutputLock

            self._lock = OutputLock(self.output)
            note = self._lock.acquire()
            if note:
                self.log(f"[yellow]Note: {escape(note)}[/]")
        previous = self.output / ckpt.CHECKPOINTS_DIR
        if not resuming and previous.exists() and self.config.overwrite:
            if self.world.is_main:
                import shutil

                shutil.rmtree(previous)
                for name in (METRICS_FILE, LOSS_PNG):
                    (self.output / name).unlink(missing_ok=True)
            self.world.barrier()

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

    # -- saving --------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, counters: dict) -> Path:
        """Write a resumable checkpoint for ``step`` (rank 0 writes; every rank waits for it)."""
        self._guard_weights(step)
        target = self.output / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(step)
        rng_per_rank = self.world.all_gather_ints(ckpt.rng_state())
        if self.world.is_main:
            state = {
                "step": step,
                "trainer": self.name,
                "config": {**stored_config(self.config), "resume": None, "overwrite": False},
                "data_position": self.train_batches.position.as_dict(),
                "rng": ckpt.rng_state(),
                "rng_per_rank": rng_per_rank,
                "counters": counters,
                "world_size": self.world.size,
            }
            optimizer_state = dict(tree_flatten(self.optimizer.state))
            target = ckpt.save_checkpoint(self.output, step, write_weights=lambda d: self.write_weights(d, step=step),
                                          optimizer_state=optimizer_state, state=state,
                                          keep=self.config.keep_checkpoints)
        self.world.barrier()
        return target

    def save_final(self, step: int) -> None:
        """Write the trained adapter (or full model) into the output directory itself, so that
        ``--adapter-path OUTPUT`` works in Lazarus and mlx-lm alike."""
        if self.world.is_main:
            self.write_weights(self.output, step=step)
        self.world.barrier()

    def resume_command(self, checkpoint: Path) -> str:
        launcher = f"mlx.launch -n {self.world.size} -- " if self.world.distributed else ""
        return f"{launcher}lazarus train {self.name} --resume {shlex.quote(str(checkpoint))}"

    # -- display -------------------------------------------------------------------------------
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
        adapter = "full fine-tune" if self.full_fine_tune else f"{self.adapter_config.fine_tune_type} rank {self.adapter_config.rank}"
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
        others = headline_text(getattr(self, "eval_metrics", {}), [k for k in self.headline_metrics if k != "loss"],
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
        bar = getattr(self, "_bar", None)
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


def device_memory_bytes() -> int | None:
    """Memory the default device can use: the GPU's (mlx's device_info) or the machine's RAM."""
    try:
        info = mx.device_info()
        sizes = [v for k, v in info.items() if "memory" in k and isinstance(v, int) and v > 0]
        if sizes:
            return max(sizes)
    except Exception:  # an older mlx: fall back to the RAM size
        pass
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def generation_bytes(model, rows: int, tokens: int) -> int:
    """A lower bound of the memory that generating ``tokens`` tokens for ``rows`` rows at once takes:
    the KV cache of every block plus one step's logits in float32."""
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", None) or 1
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    hidden = getattr(args, "hidden_size", None) or 0
    head_dim = getattr(args, "head_dim", None) or (hidden // heads if hidden else 0)
    vocab = getattr(args, "vocab_size", None) or 0
    blocks = len(getattr(model, "blocks", ()) or ())
    itemsize = next((v.dtype.size for _, v in tree_flatten(model.parameters())
                     if mx.issubdtype(v.dtype, mx.floating)), 4)
    return rows * tokens * blocks * 2 * kv_heads * head_dim * itemsize + rows * vocab * 4


def stored_config(config: TrainingConfig) -> dict:
    """The config as a checkpoint and ``lazarus.json`` keep it: paths that exist (``--model``,
    ``--data``, ``--output`` ... fields shown as PATH/DIR/FILE) made absolute, so a resumed run finds
    them from any working directory."""
    values = config.to_dict()
    for field in attrs.fields(type(config)):
        value = values.get(field.name)
        if field.metadata.get("metavar") not in ("PATH", "DIR", "FILE") or not isinstance(value, str):
            continue
        if value and not value.startswith("lazarus:") and Path(value).expanduser().exists():
            values[field.name] = str(Path(value).expanduser().absolute())
    return values


def _new_window() -> dict:
    """Sums over the steps since the last train-metrics row (time counts training steps only)."""
    return {"total": mx.array(0.0), "count": mx.array(0.0), "aux": {}, "tokens": 0, "seconds": 0.0, "steps": 0}


def _previous_evals(output: Path) -> list[dict]:
    from lazarus.training.metrics import read_metrics

    path = output / METRICS_FILE
    if not path.exists():
        return []
    return [r for r in read_metrics(path) if r.get("split") == "eval"]


def run_trainer(trainer_cls: type[Trainer], config: TrainingConfig, **kwargs) -> TrainResult:
    """Build ``trainer_cls(config)`` and train it; the Python entry point behind ``lazarus train``."""
    return trainer_cls(config, **kwargs).train()


