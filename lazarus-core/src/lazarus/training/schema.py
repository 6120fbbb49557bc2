"""The config schema: :func:`setting` fields and what is derived from them, for any attrs class.

Trainer configs (:mod:`lazarus.training.config`) and operation options (:mod:`lazarus.operations`)
declare their fields with :func:`setting`; this module turns such a class into click options
(:func:`click_options`), reads and checks config-file values (:func:`read_config_file`,
:func:`read_settings_file`) and refuses numbers no validator catches (:func:`check_numbers`).
Everything here is re-exported by :mod:`lazarus.training.config`, the documented import path.

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
from lazarus.options import FINITE_FLOAT


# -- fields -----------------------------------------------------------------------------------------
def _not_zero(meaning: str):
    def check(instance, attribute, value):
        if value == 0:
            raise ValueError(f"{attribute.name} must not be 0: {meaning}")

    return check

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


# -- field introspection ----------------------------------------------------------------------------
@attrs.frozen
class FieldKind:
    """What a config field holds: ``base`` is int, float, str or bool; ``many`` for a tuple (of str,
    int or float: ``base``)."""

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
        return FieldKind(item if item in (int, float) else str, optional, True)
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
        click_type: click.ParamType
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
    if kind.many and kind.base is float:  # a tuple of numbers: one, or a list of them
        items = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
            return tuple(float(v) for v in items)
        raise LazarusError(f"{where} must be a number or a list of numbers, got {value!r}")
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
