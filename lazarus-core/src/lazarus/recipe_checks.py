"""Checking a recipe stage before anything runs (:mod:`lazarus.recipes`): its plugin exists, its keys
are that plugin's own (a trainer's config fields, an operation's option fields, a click command's
parameters) with values of the right types, its data exists (or an earlier stage writes it), its
adapter is an earlier stage or a directory, and its ``{{ stages.NAME.FIELD }}`` references name an
earlier stage's result field."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from lazarus.errors import LazarusError

#: keys the runner sets itself for a training stage
RUNNER_TRAIN_KEYS = ("output", "resume", "overwrite")


def _where(recipe, stage) -> str:
    return f"{recipe.path}: stage {stage.index} ({stage.name})"


def check_stage(recipe, stage) -> None:
    """Check that the stage's plugin exists and its options are its own, of the right types."""
    from lazarus.operations import Operation
    from lazarus.plugins import get_registry
    from lazarus.recipe_stages import check_references

    where = _where(recipe, stage)
    registry = get_registry()
    if stage.adapter not in (None, "none") and stage.adapter not in {s.name for s in recipe.stages[:stage.index - 1]} \
            and not Path(stage.adapter).exists():
        raise LazarusError(f"{where}: adapter = {stage.adapter!r} is neither an earlier stage nor a directory")
    check_references(recipe.stages[:stage.index - 1], stage, where)
    _check_data_exists(recipe, stage, where)
    if stage.kind == "train":
        if stage.plugin not in registry.names("trainer"):
            raise LazarusError(f"{where}: no trainer named {stage.plugin!r}; installed: "
                               f"{', '.join(registry.names('trainer')) or 'none'}")
        _check_train_options(where, stage)
        return
    if stage.kind == "eval":
        known = registry.names("reward-function")
        for spec in stage.rewards:
            reward, _, weight = spec.partition(":")
            if reward not in known:
                raise LazarusError(f"{where}: no reward function named {reward!r}; installed: "
                                   f"{', '.join(known) or 'none'}")
            if weight:
                try:
                    float(weight)
                except ValueError:
                    raise LazarusError(f"{where}: reward {spec!r}: the weight after ':' must be a number") from None
    runner = stage_command(stage, where)
    if isinstance(runner, Operation):
        _check_operation_options(where, stage, runner)
    else:
        _check_command_options(where, stage, runner)


def _check_data_exists(recipe, stage, where: str) -> None:
    """A stage's ``data`` must exist before anything runs, unless an earlier stage writes it (a path
    inside the recipe's output directory)."""
    from lazarus.recipe_stages import has_reference

    value = stage.options.get("data")
    if not isinstance(value, str) or not value or has_reference(value):
        return
    path = Path(value).expanduser()
    output = Path(recipe.output).absolute()
    if path.exists() or output == path.absolute() or output in path.absolute().parents:
        return
    raise LazarusError(f"{where}: data = {value!r} does not exist; fix the path (relative paths are read from "
                       "the directory `lazarus run` is started in)")


def _check_train_options(where: str, stage) -> None:
    from lazarus.plugins import get
    from lazarus.recipe_stages import has_reference
    from lazarus.training.config import _check_value, config_fields

    trainer_cls = get("trainer", stage.plugin).load()
    cls = trainer_cls.config_class
    fields = {f.name: f for f in config_fields(cls)}
    checked = {}
    for key, value in stage.options.items():
        name = key.replace("-", "_")
        if name in RUNNER_TRAIN_KEYS:
            raise LazarusError(f"{where}: key {key!r} is set by the runner (each stage writes "
                               "OUTPUT/<stage>/ and resumes by itself); remove it")
        if name not in fields:
            raise LazarusError(f"{where}: unknown key {key!r} for trainer {stage.plugin!r}; its keys: "
                               f"{', '.join(n for n in fields if n not in RUNNER_TRAIN_KEYS)}")
        # a reference to an earlier stage's result is checked when it is filled in
        checked[name] = value if has_reference(value) else _check_value(cls, fields[name], value,
                                                                          where=f"{where}: key {key!r}")
    from lazarus.training.config import check_numbers

    try:
        check_numbers(cls(**{k: v for k, v in checked.items() if not has_reference(v)}))
    except (ValueError, TypeError) as exc:
        raise LazarusError(f"{where}: {exc}") from None
    stage.options = checked  # under the field names, as build_config takes them


def stage_command(stage, where: str = ""):
    """What runs an eval, introspect, generate or command stage: an :class:`~lazarus.operations.Operation`
    (eval, generate, a probe written as one) or a click command (a plugin command, a probe that
    is a click command)."""
    from lazarus.plugins import get_registry

    registry = get_registry()
    if stage.kind == "introspect":
        if stage.plugin not in registry.names("probe"):
            raise LazarusError(f"{where}: no probe named {stage.plugin!r}; installed: "
                               f"{', '.join(registry.names('probe')) or 'none'}")
        return registry.get("probe", stage.plugin).load()
    if stage.kind == "eval":
        from lazarus.commands.eval import evaluate

        return evaluate
    if stage.kind == "generate":
        from lazarus.commands.generate import generate_text

        return generate_text
    commands = {name: cmd for name, (_, cmd) in registry.commands.items()}
    if stage.plugin not in commands:
        raise LazarusError(f"{where}: no plugin command named {stage.plugin!r}; installed: "
                           f"{', '.join(sorted(commands)) or 'none'}")
    return commands[stage.plugin]


def _check_operation_options(where: str, stage, op) -> None:
    from lazarus.operations import check_value, keys
    from lazarus.recipe_stages import has_reference

    fields = {f.name: f for f in attrs.fields(op.options) if f.metadata.get("cli", True)}
    for key, value in stage.options.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise LazarusError(f"{where}: unknown key {key!r} for {stage.kind} {stage.plugin!r}; its keys: "
                               f"{', '.join(keys(op))}")
        if not has_reference(value):
            check_value(op.options, fields[name], value, where=f"{where}: key {key!r}", files=False)


def _options_by_key(command: click.Command) -> dict[str, click.Parameter]:
    """Every name a recipe key may use for a parameter: long option names without dashes, with
    ``-`` or ``_``, and the parameter's own name."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        names = [o.lstrip("-") for o in getattr(param, "opts", []) if o.startswith("--")]
        if isinstance(param, click.Argument) or not names:
            names = [param.name]
        for name in names + [param.name]:
            keys[name] = param
            keys[name.replace("-", "_")] = param
            keys[name.replace("_", "-")] = param
    return keys


def _check_command_options(where: str, stage, command: click.Command) -> None:
    from lazarus.recipe_stages import has_reference

    keys = _options_by_key(command)
    for key, value in stage.options.items():
        param = keys.get(key)
        if param is None or key in ("help",):
            public = sorted({p.opts[0].lstrip("-") if getattr(p, "opts", None) else p.name for p in command.params
                             if p.name not in ("help",)})
            raise LazarusError(f"{where}: unknown key {key!r} for {stage.kind} {stage.plugin!r}; its keys: "
                               f"{', '.join(public)}")
        if has_reference(value):
            continue  # filled in from an earlier stage's result when it runs
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not (getattr(param, "multiple", False) or param.nargs != 1):
            raise LazarusError(f"{where}: key {key!r} takes one value, got a list {value!r}")
        for item in values:
            if isinstance(item, (dict, list)):
                raise LazarusError(f"{where}: key {key!r} must be a plain value, got {item!r}")
            if getattr(param, "is_flag", False) and not isinstance(item, bool):
                raise LazarusError(f"{where}: key {key!r} is a switch: write true or false, got {item!r}")
            if isinstance(param.type, click.Path):
                continue  # may be written by an earlier stage; its own command checks it when it runs
            try:
                param.type.convert(item if not isinstance(item, bool) else item, param, None)
            except click.BadParameter as exc:
                raise LazarusError(f"{where}: key {key!r}: {exc.message}") from None
