"""Operations: one shape for every stage kind (eval, generate, probes).

An operation is a Python function ``fn(model, tokenizer, options) -> result`` plus an attrs options
class whose fields are declared with :func:`~lazarus.training.config.setting` (as trainer configs
are). From that one schema come the click command (:meth:`Operation.command`), the recipe stage
keys and the config-file keys (:meth:`Operation.build`, field names with ``-`` or ``_``). The result
is an attrs instance or a dict; ``metric`` names the field a recipe shows as the stage's key figure.

Writing one::

    @attrs.define(kw_only=True)
    class CountOptions:
        model: str | None = setting(None, "Model directory.", required=True, flags=("-m",))
        adapter: str | None = setting(None, "Adapter directory.")

    @attrs.frozen
    class CountResult:
        blocks: int

    @operation(options=CountOptions, metric="blocks")
    def count_blocks(model, tokenizer, options: CountOptions) -> CountResult:
        "Count the model's blocks."
        return CountResult(blocks=len(model.blocks))

``count_blocks.run(model="DIR")`` loads the model and calls it; ``count_blocks(model, tokenizer,
options)`` calls it on a loaded model; ``count_blocks.command("count-blocks")`` is the click command
(``ProbeSpec.entry`` may name the operation itself). This module imports only attrs and click.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import click

from lazarus.errors import LazarusError


@attrs.frozen(kw_only=True)
class Operation:
    """A function with its options class, the result field that is its key metric, and how the CLI
    shows its result. Built with :func:`operation`."""

    function: Callable[..., Any]  #: fn(model, tokenizer, options) -> result
    options: type  #: attrs class of setting() fields; ``model``/``adapter`` name what :meth:`run` loads
    metric: str | None = None  #: the result field that is a recipe stage's key metric
    check: Callable[[Any], Any] | None = None  #: check(options) before the model loads (cheap checks)
    show: Callable[[Any, Any], None] | None = None  #: show(result, options): what the CLI prints
    summary: Callable[[Any], str] | None = None  #: summary(result): one line for a recipe's log
    result_file: str = "result.json"  #: where a recipe stage keeps the result (in its directory)
    cli_values: dict[str, Any] = attrs.field(factory=dict)  #: fields the command sets (stream=True)
    #: ``load(model, adapter) -> (model, tokenizer, config)``; default :func:`lazarus.load_model`
    load: Callable[[str, str | None], tuple] | None = None
    name: str = ""

    def __call__(self, model, tokenizer, options=None, **values):
        """Run on a loaded model: ``options`` or keyword values of the options class."""
        return self.function(model, tokenizer, options if options is not None else self.build(values))

    @property
    def doc(self) -> str:
        return (self.function.__doc__ or "").strip()

    def build(self, values: dict[str, Any], *, where: str = "") -> Any:
        """An options instance from ``{key: value}`` (keys as field names, ``-`` or ``_``), each
        value checked against its field's type and click type. Raises LazarusError naming the key."""
        fields = {f.name: f for f in attrs.fields(self.options)}
        checked: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise LazarusError(f"{where or self.name}: unknown key {key!r}; its keys: {', '.join(keys(self))}")
            checked[name] = check_value(self.options, fields[name], value, where=f"{where or self.name}: key {key!r}")
        return make_options(self.options, checked, where=where or self.name)

    def run(self, options=None, **values):
        """Check, load ``options.model`` (with ``options.adapter``) and run: the typed result."""
        options = options if options is not None else self.build(values)
        if self.check is not None:
            options = self.check(options) or options
        model, tokenizer, _ = self.load_model(options)
        return self.function(model, tokenizer, options)

    def load_model(self, options) -> tuple:
        """``(model, tokenizer, config)`` named by ``options.model`` and ``options.adapter``."""
        adapter = getattr(options, "adapter", None)
        if self.load is not None:
            return self.load(options.model, adapter)
        from lazarus.loader import load_model

        return load_model(options.model, adapter_path=adapter)

    def metric_of(self, result) -> Any:
        """The value of the declared metric field of ``result`` (None when none is declared)."""
        return result_dict(result).get(self.metric) if self.metric else None

    def command(self, name: str | None = None) -> click.Command:
        """The click command: one option per CLI field of the options class; prints the result
        through ``show`` (default: as JSON)."""

        def callback(**values):
            options = make_options(self.options, {**{k: v for k, v in values.items() if v is not None},
                                                  **self.cli_values}, where=name or self.name)
            result = self.run(options)
            if self.show is not None:
                self.show(result, options)
            else:
                click.echo(json.dumps(result_dict(result), indent=2, default=str))

        return click.Command(name or self.name, params=click_params(self.options), callback=callback,
                             help=self.doc, short_help=self.doc.split("\n")[0] if self.doc else None,
                             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})


def operation(*, options: type, metric: str | None = None, name: str | None = None, **rest) -> Callable:
    """Decorator: ``@operation(options=Opts, metric="accuracy")`` turns ``fn(model, tokenizer,
    options) -> result`` into an :class:`Operation` (``check``, ``show``, ``summary``,
    ``result_file``, ``cli_values`` and ``load`` as there)."""

    def wrap(function):
        return Operation(function=function, options=options, metric=metric,
                         name=name or function.__name__.replace("_", "-"), **rest)

    return wrap


def result_dict(result) -> dict[str, Any]:
    """A result as a JSON-ready dict (attrs instances field by field; non-finite floats -> None).

    A field declared with ``metadata={"stored": False}`` travels with the typed result (for ``show``:
    arrays to draw, say) but is not part of the stored result nor a field later stages refer to."""
    if attrs.has(type(result)):
        result = attrs.asdict(result, recurse=True, filter=lambda field, _: field.metadata.get("stored", True))
    if not isinstance(result, dict):
        return {"value": result}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}


def keys(op: Operation) -> list[str]:
    """The recipe / config-file keys of an operation (its option fields, kebab-case)."""
    return [f.name.replace("_", "-") for f in attrs.fields(op.options) if f.metadata.get("cli", True)]


def result_fields(op: Operation) -> list[str] | None:
    """The fields an operation's result declares, when its result class says (an attrs return
    annotation), else None (a dict: any key)."""
    import typing

    try:
        hint = typing.get_type_hints(op.function).get("return")
    except Exception:  # an annotation that does not resolve: no declared fields
        return None
    if not (isinstance(hint, type) and attrs.has(hint)):
        return None
    return [f.name for f in attrs.fields(hint) if f.metadata.get("stored", True)]


# -- values ----------------------------------------------------------------------------------------
def check_value(cls: type, field: attrs.Attribute, value: Any, where: str, *, files: bool = True) -> Any:
    """One value of a recipe or config file: the field's type (as trainer configs check it), then its
    click type (ranges, choices, ``click.Path``) so that it is refused as the command line would
    refuse it. A repeatable field takes a list, or one value (a string is one value, as one
    ``--flag TEXT`` on the command line); a tuple of floats takes numbers. ``files=False`` leaves
    ``click.Path`` values unchecked (``lazarus run --check``: an earlier stage may write them)."""
    from lazarus.training.config import _check_value

    many = _many(cls, field)
    if isinstance(value, list) and not many:
        raise LazarusError(f"{where} takes one value, got a list {value!r}")
    if many and isinstance(value, str):
        value = [value]
    value = _check_value(cls, field, value, where=where)
    click_type = field.metadata.get("type")
    if isinstance(click_type, click.Path) and not files:
        return value
    if click_type is not None and value is not None:
        for item in value if isinstance(value, tuple) else (value,):
            try:
                click_type.convert(item, None, None)
            except click.BadParameter as exc:
                raise LazarusError(f"{where}: {exc.message}") from None
    return value


def _many(cls: type, field: attrs.Attribute) -> bool:
    from lazarus.training.config import field_kind

    return field_kind(cls, field).many


def make_options(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """``cls(**values)`` with its validators and number checks; errors name the key."""
    from lazarus.training.config import check_numbers

    try:
        options = cls(**values)
        check_numbers(options)
    except (ValueError, TypeError) as exc:
        raise LazarusError(f"{where + ': ' if where else ''}{exc}") from None
    missing = [f.name for f in attrs.fields(cls) if f.metadata.get("required") and getattr(options, f.name) is None]
    if missing:
        raise LazarusError(f"{where + ': ' if where else ''}missing {missing[0].replace('_', '-')} "
                           f"(--{missing[0].replace('_', '-')})")
    return options


# -- CLI ---------------------------------------------------------------------------------------------
def click_params(cls: type) -> list[click.Parameter]:
    """One click option per CLI field of an operation's options class (``setting()`` metadata:
    ``flags``, ``required``, ``type``, ``off``, ``metavar``, ``choices``, ``help``)."""
    from lazarus.options import FINITE_FLOAT
    from lazarus.training.config import _default_text, field_kind

    params: list[click.Parameter] = []
    for field in attrs.fields(cls):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        kind = field_kind(cls, field)
        long = "--" + field.name.replace("_", "-")
        names = [long, *meta.get("flags", ())]
        default = field.default if not isinstance(field.default, attrs.Factory) else None  # type: ignore[arg-type]
        help_text = meta.get("help", "")
        shown = meta.get("shown_default")
        shown = shown(cls) if callable(shown) else shown
        if shown is None and default not in (None, ()) and not (kind.base is bool and not meta.get("off")):
            shown = (" ".join(map(str, default)) if isinstance(default, tuple)
                     else _default_text(default) if not isinstance(default, bool) else None)
        # a number range shows its default in click's own bracket, as click commands do: [default: 5; x>=1]
        in_bracket = isinstance(meta.get("type"), (click.IntRange, click.FloatRange)) and shown == str(default)
        if shown is not None and not in_bracket:
            help_text = f"{help_text}  [default: {shown}]"
        common = dict(help=help_text, required=bool(meta.get("required")), metavar=meta.get("metavar"),
                      show_default=in_bracket or None)
        if kind.base is bool and not kind.many:
            if meta.get("off"):
                names = [f"{long}/{meta['off']}", *meta.get("flags", ())]
                shown_text = f"  [default: {long[2:] if default else meta['off'][2:]}]"
                params.append(click.Option([*names, field.name], default=bool(default),
                                           help=meta.get("help", "") + shown_text))
            else:
                params.append(click.Option([*names, field.name], is_flag=True, default=bool(default),
                                           help=meta.get("help", "")))
            continue
        if meta.get("type") is not None:
            click_type = meta["type"]
        elif meta.get("choices"):
            click_type = click.Choice(meta["choices"])
        else:
            click_type = {int: click.INT, float: FINITE_FLOAT, str: click.STRING}[kind.base]
        if kind.many:
            params.append(click.Option([*names, field.name], type=click_type, multiple=True,
                                       default=default or (), **common))
        else:  # no default=None: click then reports a missing required option itself (usage + one line)
            given = {"default": default} if default is not None else {}
            params.append(click.Option([*names, field.name], type=click_type, **given, **common))
    return params
