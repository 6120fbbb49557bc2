"""Training configuration: one attrs schema is the source of the CLI options and the config-file keys.

A trainer's config class is an attrs class that extends :class:`TrainingConfig` with its own fields,
each declared with :func:`setting` (default + help). From that one schema:

- :func:`click_options` makes the ``lazarus train NAME`` options (``--learning-rate``, ``--lora-targets``...);
- :func:`read_config_file` reads a TOML (or YAML, when a YAML library is installed) file whose keys are the
  field names, and rejects unknown keys naming the file and the key;
- :func:`build_config` merges, lowest to highest: field defaults, a resumed run's saved config, the config
  file, the options given on the command line.

This module imports only the standard library, attrs and click, so building ``--help`` stays light.
"""

from __future__ import annotations

import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.options import FINITE_FLOAT, MAX_SEED

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


def _not_zero(meaning: str):
    def check(instance, attribute, value):
        if value == 0:
            raise ValueError(f"{attribute.name} must not be 0: {meaning}")

    return check


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


def setting(default: Any = None, help: str = "", *, choices: tuple[str, ...] | None = None,
            minimum: float | None = None, metavar: str | None = None, many: bool = False,
            cli: bool = True, shown_default: Any = None, maximum: float | None = None,
            nonzero: str | None = None, flags: tuple[str, ...] = (), required: bool = False,
            type: click.ParamType | None = None, off: str | None = None) -> Any:
    """Declare one config field: its default, the help shown by ``--help``, and optional checks.

    ``choices`` limits a string field; ``minimum`` and ``maximum`` are inclusive bounds for numbers
    (``None`` values are always allowed for optional fields; floats must be finite and integers
    at most ``MAX_INT`` besides, see :func:`check_numbers`); ``many=True`` marks a tuple-of-strings field
    (given as ``a,b`` on the command line; implied by a tuple default); ``cli=False`` keeps a field
    out of the CLI; ``nonzero`` (a hint) refuses 0. ``default`` may be an ``attrs.Factory(fn, takes_self=True)`` (a default that
    depends on earlier fields); ``shown_default`` (text, or ``fn(config class) -> text``) is what
    ``--help`` shows as its default.

    For operations (:mod:`lazarus.operations`) besides: ``flags`` are more option names (``"-m"``),
    ``required`` makes the option required, ``type`` is the click type that checks a value where it
    is typed (``click.IntRange(min=1)``, ``FiniteFloat(0, 1)``), ``off`` names a bool's off switch
    (``"--quiet"``).
    """
    validators = []
    if choices is not None:
        validators.append(_one_of(choices))
    if minimum is not None:
        validators.append(_at_least(minimum))
    if maximum is not None:
        validators.append(_at_most(maximum))
    metadata = {"help": help, "choices": choices, "metavar": metavar, "cli": cli, "minimum": minimum,
                "maximum": maximum,
                "shown_default": shown_default, "flags": tuple(flags), "required": required, "type": type,
                "off": off}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or None as the default of a config field")
    if nonzero is not None:
        validators.append(_not_zero(nonzero))
    return attrs.field(default=default, metadata=metadata, validator=validators or None,
                       converter=_tuple_converter if many or isinstance(default, tuple) else None)


def _tuple_converter(value):
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def _at_most(maximum):
    def check(instance, attribute, value):
        if value is not None and value > maximum:
            raise ValueError(f"{attribute.name} must be <= {maximum}, got {value!r}")

    return check


def _one_of(choices):
    def check(instance, attribute, value):
        if value is not None and value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _at_least(minimum):
    def check(instance, attribute, value):
        if value is not None and value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum:g}, got {value!r}")

    return check


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


# -- field introspection ----------------------------------------------------------------------------
@attrs.frozen
class FieldKind:
    """What a config field holds: ``base`` is int, float, str or bool; ``many`` for tuples of str."""

    base: type
    optional: bool
    many: bool


def field_kind(cls: type, field: attrs.Attribute) -> FieldKind:
    """Resolve a field's annotation (``int``, ``str | None``, ``tuple[str, ...] | None``...)."""
    hints = typing.get_type_hints(cls)
    hint = hints[field.name]
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"config field {field.name}: unsupported type {hint!r}")
        hint = rest[0]
    if typing.get_origin(hint) is tuple:
        item = (typing.get_args(hint) or (str,))[0]
        return FieldKind(int if item is int else str, optional, True)
    if hint not in (int, float, str, bool):
        raise TypeError(f"config field {field.name}: unsupported type {hint!r}")
    return FieldKind(hint, optional, False)


def config_fields(cls: type) -> list[attrs.Attribute]:
    """The fields of a config class, in declaration order."""
    return list(attrs.fields(cls))


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# -- CLI --------------------------------------------------------------------------------------------
def _default_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def click_options(cls: type) -> list[click.Option]:
    """One click option per CLI field of ``cls``. Their click default is ``None`` so that
    :func:`build_config` can tell "given on the command line" from "left at the default"."""
    options = []
    for field in config_fields(cls):
        if not field.metadata.get("cli", True):
            continue
        kind = field_kind(cls, field)
        name = option_name(field.name)
        help_text = field.metadata.get("help", "")
        shown = field.metadata.get("shown_default")
        shown = shown(cls) if callable(shown) else shown if shown is not None else _default_text(field.default)
        if shown is not None:
            help_text = f"{help_text}  [default: {shown}]"
        common = dict(default=None, help=help_text, show_default=False)
        if kind.base is bool and not kind.many:
            options.append(click.Option([f"{name}/--no-{name[2:]}", field.name], **common))
            continue
        if kind.many:  # repeatable and comma-separated: --reward a --reward b:0.2 == --reward a,b:0.2
            options.append(click.Option([name, field.name], type=click.STRING, metavar=field.metadata.get("metavar"),
                                        multiple=True, callback=_join_many, **common))
            continue
        if field.metadata.get("choices"):
            click_type = click.Choice(field.metadata["choices"])
        else:
            click_type = {int: click.INT, float: FINITE_FLOAT, str: click.STRING}[kind.base]
        options.append(click.Option([name, field.name], type=click_type, metavar=field.metadata.get("metavar"),
                                    **common))
    return options


def _join_many(ctx, param, values):
    """A repeatable tuple option: every occurrence, each split at commas; None when not given."""
    parts = tuple(part.strip() for value in values or () for part in value.split(",") if part.strip())
    return parts or None


# -- config files -----------------------------------------------------------------------------------
def read_settings_file(path: str | os.PathLike, what: str = "config") -> Any:
    """The data of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file: a training config or a
    recipe (``what`` names it in errors). A missing file, bad syntax, a missing PyYAML or another
    suffix raises :class:`LazarusError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LazarusError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise LazarusError(f"{path}: reading TOML needs Python 3.11+; use a YAML {what} "
                               "(pip install 'lazarus-core[yaml]')") from None
        try:
            with path.open("rb") as handle:
                return tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise LazarusError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise LazarusError(f"{path}: {_not_utf8(path, exc)}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise LazarusError(f"{path}: reading YAML {what} files needs PyYAML: pip install "
                               f"'lazarus-core[yaml]' (or write the {what} as TOML)") from None
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise LazarusError(f"{path}: {_not_utf8(path, exc)}") from None
        except yaml.YAMLError as exc:
            raise LazarusError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    raise LazarusError(f"{path}: unknown {what} file type {suffix or '(none)'}; use .toml or .yaml")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a settings file stops being UTF-8: line and byte."""
    data = path.read_bytes()
    line = data.count(b"\n", 0, exc.start) + 1
    return f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8"


def read_config_file(path: str | os.PathLike, cls: type) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into ``{field: value}``.

    Keys are field names (``learning_rate``; ``learning-rate`` is accepted too). An unknown key, a
    value of the wrong type or an unreadable file raises :class:`LazarusError` naming file and key.
    """
    path = Path(path)
    raw = read_settings_file(path, what="config")
    if not isinstance(raw, dict):
        raise LazarusError(f"{path}: the top level must be a table of key = value settings")

    fields = {f.name: f for f in config_fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise LazarusError(f"{path}: unknown key {key!r}; valid keys: {', '.join(fields)}")
        values[name] = _check_value(cls, fields[name], value, where=f"{path}: key {key!r}")
    return values


def _check_value(cls: type, field: attrs.Attribute, value: Any, where: str) -> Any:
    kind = field_kind(cls, field)
    if value is None and kind.optional:
        return None
    if kind.many and kind.base is int:  # a tuple of integers: one, or a list of them
        items = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return tuple(items)
        raise LazarusError(f"{where} must be an integer or a list of integers, got {value!r}")
    if kind.many:
        if isinstance(value, str):
            return _tuple_converter(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise LazarusError(f"{where} must be a list of strings, got {value!r}")
    if kind.base is bool:
        ok = isinstance(value, bool)
    elif kind.base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise LazarusError(f"{where} must be {kind.base.__name__}, got {value!r}")
    return value


#: the largest integer setting (counts and sizes beyond it are mistakes that would overflow later)
MAX_INT = 2**31 - 1


def check_numbers(config) -> None:
    """Refuse what no validator of a field catches: a float that is not finite (``nan``, ``inf``,
    from a config file, a saved run or Python) and an integer beyond ``MAX_INT`` (or the field's own
    maximum). Raises ``ValueError`` starting with the field name (build_config names the option)."""
    cls = type(config)
    for field in config_fields(cls):
        value = getattr(config, field.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field.name} must be a finite number, got {value!r}")
        top = field.metadata.get("maximum")
        if isinstance(value, int) and top is None and abs(value) > MAX_INT:
            raise ValueError(f"{field.name} must be at most {MAX_INT}, got {value!r}")


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
