"""Running one recipe stage in-process, by kind, and the results later stages refer to.

A training stage builds its trainer's config from the stage keys and trains; an eval, generate or
probe stage calls its :class:`~lazarus.operations.Operation` with options built from the stage keys
and keeps the typed result (``OUTPUT/<stage>/result.json``, ``summary.json`` for eval), whose
declared ``metric`` field is the stage's key figure; a plugin command (or a probe that is a plain
click command) is invoked with its parameters set by name. Nothing is assembled into a command line
and nothing printed is parsed.

References: a stage key may hold ``{{ stages.NAME.FIELD }}``, the FIELD of the result of the earlier
stage NAME (``output``: its directory). A value that is only the reference takes the field's value
(a number stays a number); inside other text it is written as text.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import click

from lazarus.errors import LazarusError

#: ``{{ stages.NAME.FIELD }}``: NAME is everything up to the last dot
REFERENCE = re.compile(r"\{\{\s*stages\.(?P<stage>[^{}\s]+)\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


# -- references --------------------------------------------------------------------------------------
def has_reference(value: Any) -> bool:
    if isinstance(value, list):
        return any(has_reference(v) for v in value)
    return isinstance(value, str) and REFERENCE.search(value) is not None


def check_references(earlier: list, stage, where: str) -> None:
    """Every reference of ``stage`` names an earlier stage and, when that stage's result declares
    its fields (an operation with an attrs result), one of them."""
    by_name = {s.name: s for s in earlier}
    for key, value in stage.options.items():
        for item in value if isinstance(value, list) else [value]:
            for match in REFERENCE.finditer(item) if isinstance(item, str) else ():
                name, field = match["stage"], match["field"]
                if name not in by_name:
                    raise LazarusError(f"{where}: key {key!r}: {match[0]} names no earlier stage; earlier stages: "
                                       f"{', '.join(by_name) or 'none'}")
                fields = declared_fields(by_name[name])
                if fields is not None and field not in fields:
                    raise LazarusError(f"{where}: key {key!r}: stage {name!r} has no result field {field!r}; its "
                                       f"fields: {', '.join(fields)}")


def declared_fields(stage) -> list[str] | None:
    """The result fields a stage declares (None: not known before it runs)."""
    if stage.kind == "train":
        from lazarus.plugins import get

        headline = getattr(get("trainer", stage.plugin).load(), "headline_metrics", ())
        return list(dict.fromkeys(["output", *(f.name for f in attrs.fields(_train_result_class())
                                               if f.name != "metrics"),
                                   *(k for k in headline if k.isidentifier() and k != "loss")]))
    from lazarus.operations import Operation, result_fields
    from lazarus.recipes import stage_command

    runner = stage_command(stage)
    if isinstance(runner, Operation):
        fields = result_fields(runner)
        return None if fields is None else ["output", *fields]
    return None


def _train_result_class():
    from lazarus.training.trainer import TrainResult

    return TrainResult


def resolve(options: dict[str, Any], results: dict[str, dict], where: str) -> dict[str, Any]:
    """``options`` with every reference replaced by the earlier stage's result field."""

    def one(value):
        if isinstance(value, list):
            return [one(v) for v in value]
        if not isinstance(value, str):
            return value
        whole = REFERENCE.fullmatch(value.strip())
        if whole:
            return lookup(whole)
        return REFERENCE.sub(lambda m: str(lookup(m)), value)

    def lookup(match):
        result = results.get(match["stage"])
        if result is None or match["field"] not in result:
            raise LazarusError(f"{where}: {match[0]}: stage {match['stage']!r} left no result field "
                               f"{match['field']!r}" + (f"; it has {', '.join(result)}" if result else ""))
        return result[match["field"]]

    return {key: one(value) for key, value in options.items()}


# -- metrics -------------------------------------------------------------------------------------------
def metric_text(name: str | None, value: Any) -> str:
    """A result field as the run table shows it: ``accuracy 0.250``."""
    if name is None or value is None:
        return ""
    if isinstance(value, float):
        return f"{name} {value:.3f}"
    if isinstance(value, (int, str)):
        return f"{name} {value}"[:60]
    return ""


def train_result(result, headline: tuple[str, ...]) -> dict[str, Any]:
    """A training stage's result for later stages: the run's losses and its last headline metrics."""
    from lazarus.operations import result_dict

    record = {k: v for k, v in result_dict(result).items() if k != "metrics"}
    record["output"] = str(result.output)
    last = {}
    for row in result.metrics:
        last.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in headline:
        if key in last:
            record.setdefault(key, last[key])
    return record


def train_metric(result, headline: tuple[str, ...] = ()) -> str:
    rows = [r for r in result.metrics if r.get("split") == "train"]
    evals = [r for r in result.metrics if r.get("split") == "eval"]
    parts = []
    if result.first_eval_loss is not None and result.last_eval_loss is not None:
        parts.append(f"eval loss {result.first_eval_loss:.3f} → {result.last_eval_loss:.3f}")
    elif rows:
        parts.append(f"train loss {rows[-1]['loss']:.3f}")
    from lazarus.training.metrics import metric_label

    keys = [k for k in headline if k != "loss"] or ["rewards/accuracy", "reward_mean", "classifier/accuracy"]
    last: dict = next((r for r in reversed(evals) if any(k in r for k in keys)), {}) \
        or next((r for r in reversed(rows) if any(k in r for k in keys)), {})
    for key in keys:
        if isinstance(last.get(key), (int, float)):
            parts.append(f"{metric_label(key)} {last[key]:.2f}")
    return ", ".join(parts)


# -- running -------------------------------------------------------------------------------------------
@attrs.define
class Outcome:
    """What running one stage gave: ``done`` or ``interrupted``, the key figure and the result."""

    status: str
    metric: str = ""
    result: dict[str, Any] | None = None


def run_train(stage, options: dict, model: str, adapter: str | None, directory: Path, *, resume: bool,
              console) -> Outcome:
    from lazarus.plugins import get
    from lazarus.training.config import build_config

    trainer_cls = get("trainer", stage.plugin).load()
    values = {**options, "model": model, "output": str(directory), "adapter": adapter}
    if resume:
        values["resume"] = str(directory)
    elif (directory / "checkpoints").exists():
        values["overwrite"] = True  # this stage's inputs changed: its earlier run is stale
    config = build_config(trainer_cls.config_class, cli_values=values)
    trainer = trainer_cls(config, console=console)
    trainer.name = stage.plugin
    result = trainer.train()
    if result.interrupted:
        return Outcome("interrupted", f"stopped at step {result.step}/{result.total_steps}")
    headline = tuple(getattr(trainer_cls, "headline_metrics", ()))
    return Outcome("done", train_metric(result, headline), train_result(result, headline))


def run_operation(stage, op, options: dict, model: str, adapter: str | None, directory: Path, *,
                  console) -> Outcome:
    """Build the operation's options from the stage keys (the stage's model and adapter, and its
    output files inside the stage directory unless given), run it in-process and keep its result."""
    from lazarus.data.records import write_text_atomic
    from lazarus.operations import result_dict

    fields = {f.name for f in attrs.fields(op.options)}
    values = {str(k).replace("-", "_"): v for k, v in options.items()}
    defaults: dict[str, Any] = {"model": model, "adapter": adapter, "report": str(directory / "report"),
                                "output": str(directory / ("results.jsonl" if stage.kind == "eval" else "output"))}
    if stage.kind == "eval":
        defaults["reward"] = tuple(stage.rewards)
        defaults["force"] = True  # the results file is this stage's own, from an earlier run
    if "stream" in fields:
        defaults["stream"] = True  # generated text appears as it is generated, as on the command line
    values = {**{k: v for k, v in defaults.items() if k in fields and v is not None}, **values}
    where = f"stage {stage.name}"
    built = op.build(values, where=where)
    if op.check is not None:
        built = op.check(built) or built
    console.print(f"{op.name}({_brief(values)})", style="dim", markup=False, highlight=False)
    net, tokenizer, _ = op.load_model(built)
    result = op.function(net, tokenizer, built)
    record = result_dict(result)
    if record.get("finish_reason") == "interrupted":
        return Outcome("interrupted")
    write_text_atomic(directory / op.result_file, json.dumps(record, indent=2, default=str) + "\n")
    if op.summary is not None:
        console.print(op.summary(result), markup=False, highlight=False)
    elif op.show is not None:
        op.show(result, built)
    return Outcome("done", metric_text(op.metric, record.get(op.metric) if op.metric else None), record)


def _brief(values: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items() if k not in ("stream",))[:300]


def run_command(stage, command: click.Command, options: dict, model: str, adapter: str | None,
                directory: Path) -> Outcome:
    """Invoke a click command in-process with its parameters set by name (no command line): the
    stage's model and adapter, its ``--json``/``--report``/``--output`` inside the stage directory
    unless given. Its printed output is kept in ``output.txt``; ``result.json``, when the command
    writes one, is the stage's result."""
    from lazarus.recipes import _options_by_key

    keys = _options_by_key(command)
    values = {keys[k].name: v for k, v in options.items() if k in keys}
    for key, given in (("model", model), ("adapter", adapter), ("json", str(directory / "result.json")),
                       ("report", str(directory / "report")), ("output", str(directory / "output"))):
        param = keys.get(key)
        if given is None or param is None or param.name in values or isinstance(param, click.Argument) \
                or getattr(param, "is_flag", False):
            continue
        values[param.name] = given
    prog = f"lazarus {stage.plugin}"
    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        try:
            with click.Context(command, info_name=prog) as ctx:
                for param in command.get_params(ctx):
                    value: Any = values.get(param.name)
                    if isinstance(value, list) or (value is not None and (param.multiple or param.nargs != 1)):
                        value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
                    param.handle_parse_result(ctx, {param.name: value} if param.name in values else {}, [])
                if command.callback is not None:
                    ctx.invoke(command.callback, **ctx.params)
        except click.exceptions.Exit as exc:
            if exc.exit_code:
                raise LazarusError(f"stage {stage.name}: `{stage.plugin}` exited with {exc.exit_code}") from None
        except click.ClickException as exc:
            raise LazarusError(f"stage {stage.name}: {exc.format_message()}") from None
        except click.Abort:
            return Outcome("interrupted")
    (directory / "output.txt").write_text(captured.getvalue(), encoding="utf-8")
    try:
        result = json.loads((directory / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    return Outcome("done", "", result if isinstance(result, dict) else None)


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()

    def isatty(self):
        return False
