"""Training configuration: one attrs schema is the source of the CLI options and the config-file keys.

A trainer's config class is an attrs class that extends :class:`TrainingConfig` with its own fields,
each declared with :func:`setting` (default + help). From that one schema:

- :func:`click_options` makes the ``lazarus train NAME`` options (``--learning-rate``, ``--lora-targets``...);
- :func:`read_config_file` reads a TOML (or YAML, when a YAML library is installed) file whose keys are the
  field names, and rejects unknown keys naming the file and the key;
- :func:`build_config` merges, lowest to highest: field defaults, a resumed run's saved config, the config
  file, the options given on the command line.

The field machinery (:func:`setting`, :func:`click_options`, config files, :func:`check_numbers`) is
in :mod:`lazarus.training.schema` and re-exported here, the import path trainers and plugins use.
This module imports only the standard library, attrs and click, so building ``--help`` stays light.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.options import MAX_SEED

# the schema machinery lives in lazarus.training.schema; this module is its documented import path
from lazarus.training.schema import (  # noqa: F401
    MAX_INT,
    FieldKind,
    _check_value,
    _default_text,
    check_numbers,
    click_options,
    config_fields,
    field_kind,
    option_name,
    read_config_file,
    read_settings_file,
    setting,
)

#: the learning-rate schedules :mod:`lazarus.training.schedules` implements
SCHEDULES = ("constant", "linear", "cosine")
#: blocks adapted when --num-layers is not given (as mlx-lm), or all of a model with fewer
DEFAULT_NUM_LAYERS = 16
#: the learning-rate schedule of a run that does not choose one: warmup, then cosine decay to
#: --min-learning-rate, so that the end of a run settles instead of bouncing at the peak rate
DEFAULT_SCHEDULE = "cosine"
#: warmup of a run that does not set --warmup-steps: this share of its steps, at most MAX_WARMUP
WARMUP_SHARE = 0.05
MAX_WARMUP = 100
#: validation batches per evaluation when --eval-batches is not given: at most MAX_EVAL_BATCHES, and
#: in a short run no more than EVAL_SHARE batches per training micro-batch over all its evaluations
#: (an eval batch costs about a third to a half of a training step: validation stays <= ~25% of a run)
MAX_EVAL_BATCHES = 25
EVAL_SHARE = 0.5
#: train-metric rows (and progress-bar figures) when --log-interval is not given: every
#: LOG_INTERVAL steps, more often in a short run so that it still draws a curve
LOG_INTERVAL = 10


def resolve_warmup(config, total_steps: int) -> int:
    """Warmup steps of a run: ``--warmup-steps`` when given, else 5% of ``total_steps`` (at most 100)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return min(MAX_WARMUP, int(WARMUP_SHARE * total_steps))


def resolve_eval_batches(config, total_steps: int) -> int:
    """Validation batches per evaluation: ``--eval-batches`` when given (-1: all), else up to 25,
    bounded so that all the evaluations of the run (start, every --eval-interval, end) together take
    at most half as many batches as its training micro-batches."""
    if config.eval_batches is not None:
        return config.eval_batches
    evals = 2 + ((total_steps - 1) // config.eval_interval if config.eval_interval else 0)
    micro_batches = total_steps * config.grad_accumulation
    return max(1, min(MAX_EVAL_BATCHES, int(EVAL_SHARE * micro_batches / evals)))


def resolve_log_interval(config, total_steps: int) -> int:
    """Steps between train-metric rows: ``--log-interval`` when given, else 10, or fewer in a run of
    under 200 steps (about 20 rows; every step in a run of under 40)."""
    if config.log_interval is not None:
        return config.log_interval
    return max(1, min(LOG_INTERVAL, total_steps // 20))


def _default_learning_rate(config) -> float:
    """The learning rate of a run that does not set one, by trainer and ``fine_tune_type``
    (:attr:`TrainingConfig.LEARNING_RATES`; adapter types from plugins get the ``lora`` rate)."""
    rates = type(config).LEARNING_RATES
    return rates.get(config.fine_tune_type, rates["lora"])


def _learning_rate_text(cls) -> str:
    rates = cls.LEARNING_RATES
    return f"{rates['lora']:g} for lora/dora adapters, {rates['full']:g} for full"



def resolve_num_layers(num_layers: int | None, blocks: int) -> int:
    """The ``num_layers`` of the adapter for a model of ``blocks`` blocks: ``None`` (not given) means
    ``min(16, blocks)``; ``-1`` (all, as mlx-lm reads it) stays; more than ``blocks`` is an error
    naming both numbers."""
    if num_layers is None:
        return min(DEFAULT_NUM_LAYERS, blocks)
    if num_layers <= 0:
        return num_layers
    if num_layers > blocks:
        raise LazarusError(f"num_layers {num_layers} is more than the model's {blocks} blocks; use at most "
                           f"{blocks}, -1 for all, or leave it out (default: {DEFAULT_NUM_LAYERS} or all)",
                           field="num_layers")
    return num_layers


@attrs.define(kw_only=True)
class TrainingConfig:
    """Everything a training run needs besides the trainer's loss. Trainers subclass this.

    Field names are the config-file keys; ``--field-name`` is the CLI option.
    """

    # -- what to train on ----------------------------------------------------------------------
    model: str | None = setting(None, "Base model: a local directory in Hugging Face layout, or a hub id.",
                                metavar="PATH")
    data: str | None = setting(
        None, "Training data: a JSONL file, or a directory with train.jsonl (and valid.jsonl for eval).",
        metavar="PATH")
    output: str = setting("lazarus-out", "Output directory: adapter, metrics.jsonl, loss.png, checkpoints/.",
                          metavar="DIR")
    resume: str | None = setting(
        None, "Resume from a checkpoint directory (or an output directory: its latest checkpoint).",
        metavar="DIR")
    overwrite: bool = setting(False, "Start afresh in an output directory that holds an earlier run "
                                     "(its checkpoints and metrics are deleted).")
    dtype: str | None = setting(None, "Load the model in this dtype (default: as stored).",
                                choices=("float32", "float16", "bfloat16"))

    # -- adapter -------------------------------------------------------------------------------
    fine_tune_type: str = setting("lora", "What to train: lora, dora (adapters) or full (the weights of the "
                                          "last --num-layers blocks), or an adapter type from a plugin.",
                                  metavar="TYPE")
    adapter: str | None = setting(
        None, "Start from this adapter directory (e.g. an SFT run's output): its type, rank and weights "
              "are used and training continues them. Preference and RL trainers then take this adapter "
              "(not the bare base) as their reference model.", metavar="DIR")
    rank: int = setting(8, "LoRA/DoRA rank.", minimum=1)
    scale: float = setting(20.0, "LoRA/DoRA scale: y = W x + scale * (x @ A) @ B.")
    dropout: float = setting(0.0, "Dropout on the LoRA/DoRA input.", minimum=0.0)
    lora_targets: tuple[str, ...] | None = setting(
        None, "Comma-separated module names to adapt, e.g. q_proj,v_proj (default: the adapter's default).",
        metavar="NAMES", many=True)
    num_layers: int | None = setting(
        None, f"Adapt the last N transformer blocks (default: {DEFAULT_NUM_LAYERS}, or all of a smaller "
              "model; -1: all). More than the model has is an error.", minimum=-1, metavar="N",
        nonzero="adapt at least one block (N >= 1), or all with -1")

    # -- optimisation --------------------------------------------------------------------------
    learning_rate: float = setting(
        attrs.Factory(_default_learning_rate, takes_self=True),
        "Peak learning rate (AdamW); the default depends on the trainer and --fine-tune-type.", minimum=0.0,
        shown_default=_learning_rate_text)
    lr_schedule: str = setting(DEFAULT_SCHEDULE, "Learning-rate schedule after warmup.", choices=SCHEDULES)
    warmup_steps: int | None = setting(
        None, "Linear warmup steps from 0 to the peak learning rate.", minimum=0, metavar="N",
        shown_default=f"{WARMUP_SHARE:.0%} of the run's steps, at most {MAX_WARMUP}")
    min_learning_rate: float = setting(0.0, "Final learning rate of the linear and cosine schedules.",
                                       minimum=0.0)
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay.", minimum=0.0)
    max_grad_norm: float = setting(1.0, "Clip gradients to this global L2 norm (0 disables clipping).",
                                   minimum=0.0)
    grad_accumulation: int = setting(1, "Micro-batches whose gradients make one optimizer step.", minimum=1)
    batch_size: int = setting(4, "Examples per micro-batch, over all ranks (split evenly between them).",
                              minimum=1)
    max_steps: int | None = setting(None, "Optimizer steps to train for (default 1000 unless --epochs).",
                                    minimum=1)
    epochs: int | None = setting(None, "Passes over the training data (stops at whichever of --max-steps "
                                       "and --epochs comes first).", minimum=1)
    max_seq_length: int = setting(2048, "Truncate examples to this many tokens.", minimum=2)
    seed: int = setting(0, "Seed for adapter initialisation, data order and dropout (0 to 2**32 - 1).",
                        minimum=0, maximum=MAX_SEED)
    compile: bool = setting(True, "Compile the training step with mx.compile.")

    # -- bookkeeping ---------------------------------------------------------------------------
    log_interval: int | None = setting(
        None, "Steps between train-metric rows in metrics.jsonl (and figures on the progress bar).", minimum=1,
        metavar="N", shown_default=f"{LOG_INTERVAL}; every 1/20 of a run of under {20 * LOG_INTERVAL} steps")
    eval_interval: int = setting(200, "Steps between evaluations on the validation set (0: only at "
                                      "the start and end).", minimum=0)
    eval_batches: int | None = setting(
        None, "Validation batches per evaluation (-1: the whole set).", minimum=-1, metavar="N",
        nonzero="an evaluation of no batches measures nothing; use N >= 1 or -1 (the whole set), or "
                "--eval-interval 0 for fewer evaluations",
        shown_default=f"{MAX_EVAL_BATCHES}, fewer in a short run: all evaluations together take at most "
                      f"{EVAL_SHARE:g} batch per training batch")
    save_interval: int = setting(100, "Steps between resumable checkpoints (0: only at the end).", minimum=0)
    keep_checkpoints: int = setting(3, "How many step checkpoints to keep (0: keep all).", minimum=0)
    max_eval_loss_rise: float = setting(
        1.0, "Divergence guard: stop when an eval loss exceeds max(1.5 x the first eval loss, the first + "
             "this); 0 turns this check off (a non-finite loss or gradient always stops the run).",
        minimum=0.0)

    #: default number of optimizer steps when neither max_steps nor epochs is given
    DEFAULT_STEPS: typing.ClassVar[int] = 1000
    #: peak learning rate of a run that does not set one, by fine_tune_type: an adapter trains a few
    #: new weights from zero and takes larger steps than a full fine-tune, which moves every
    #: pretrained weight. Trainers whose loss pulls harder (preference, RL) lower it in their config.
    LEARNING_RATES: typing.ClassVar[dict[str, float]] = {"lora": 1e-4, "dora": 1e-4, "full": 1e-5}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in attrs.asdict(self, recurse=False).items()}


# -- merging ----------------------------------------------------------------------------------------
def build_config(cls: type, *, cli_values: dict[str, Any] | None = None, config_file: str | None = None,
                 saved: dict[str, Any] | None = None):
    """Make a ``cls`` instance from (lowest to highest): defaults, ``saved`` (a resumed run's
    config), ``config_file``, ``cli_values`` (``None`` values mean "not given" and are skipped).

    Raises :class:`LazarusError` naming the option for a value a validator rejects.
    """
    values: dict[str, Any] = {}
    names = {f.name for f in config_fields(cls)}
    if saved:
        values.update({k: v for k, v in saved.items() if k in names})
        if saved.get("num_layers") == DEFAULT_NUM_LAYERS and "num_layers" in names:
            values["num_layers"] = None  # earlier 0.1 builds saved the default itself; keep its meaning
    if config_file:
        values.update(read_config_file(config_file, cls))
    values.update({k: v for k, v in (cli_values or {}).items() if v is not None and k in names})
    _move_adapter_type(values, announce=bool(cli_values and cli_values.get("adapter")) or bool(config_file))
    try:
        config = cls(**values)
        check_numbers(config)
        return config
    except (ValueError, TypeError) as exc:
        message = str(exc)
        for name in names:  # name the option the way the user typed it
            if message.startswith(f"{name} "):
                message = f"{option_name(name)} (config key {name!r}) {message[len(name) + 1:]}"
                break
        raise LazarusError(f"invalid training setting: {message}") from None


#: adapter *types* that ``adapter`` held before it came to mean a starting adapter directory
_LEGACY_ADAPTER_TYPES = ("lora", "dora", "full")


def _move_adapter_type(values: dict[str, Any], announce: bool) -> None:
    """``adapter = "lora"`` (a type, as before 0.2) becomes ``fine_tune_type = "lora"``, with a
    one-line notice; a directory of that name still wins, because ``--adapter`` now means a directory."""
    adapter = values.get("adapter")
    if adapter not in _LEGACY_ADAPTER_TYPES or Path(adapter).is_dir():
        return
    values["fine_tune_type"] = values.pop("adapter")
    if announce:
        click.echo(f"Note: --adapter {adapter} is deprecated: --adapter now names an adapter directory to "
                   f"start from; use --fine-tune-type {adapter} (config key fine_tune_type).", err=True)
