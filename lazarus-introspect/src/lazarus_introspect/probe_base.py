"""What every probe written as an operation (:mod:`lazarus.operations`) shares.

:class:`ProbeOptions` holds ``--model``, ``--adapter``, ``--json`` and ``--report`` (a probe's
options class subclasses it and adds its own :func:`~lazarus.training.config.setting` fields);
:class:`ProbeResult` is the header every probe's result starts with (the first keys of its JSON);
:func:`check_outputs` checks ``--json``/``--report`` before the model loads; :func:`result_json`
is the JSON a probe writes (a result's optional fields that were not filled are left out, so the
file holds what the probe computed). Imports only attrs and click (``--help`` stays light).
"""

from __future__ import annotations

from typing import Any

import attrs
import click

from lazarus.training.config import setting


@attrs.define(kw_only=True)
class ProbeOptions:
    """The options every probe has; subclass it (``@attrs.define(kw_only=True)``) for a probe's own."""

    model: str | None = setting(None, "Model directory in Hugging Face layout (or a hub id).", required=True,
                                flags=("-m",), metavar="M")
    adapter: str | None = setting(None, "Adapter directory (mlx-lm layout) to load on top of the model.",
                                  metavar="DIR", type=click.Path(file_okay=False))
    json: str | None = setting(None, "Also write the numbers shown in the table to FILE as JSON.", metavar="FILE",
                               type=click.Path(dir_okay=False))
    report: str | None = setting(None, "Write DIR/report.html (self-contained), PNG heatmaps and report.json.",
                                 metavar="DIR", type=click.Path(file_okay=False))


def check_outputs(options: ProbeOptions) -> None:
    """``--json`` and ``--report`` are checked before the model loads (one line, exit 2)."""
    from lazarus.paths import check_output_path

    if options.json:
        check_output_path(options.json, kind="file", option="--json")
    if options.report:
        check_output_path(options.report, kind="dir", option="--report")


def optional(default: Any = None, *, present_with: str | None = None) -> Any:
    """A result field that a run may leave unfilled (None: then absent from the probe's JSON). With
    ``present_with``, it is in the JSON (null too) whenever that other field is filled."""
    return attrs.field(default=default, metadata={"optional": True, "present_with": present_with})


@attrs.frozen(kw_only=True)
class ProbeResult:
    """The header of every probe's result (and of its JSON)."""

    probe: str  #: the probe's name
    model: str  #: the model as given
    adapter: str | None  #: the adapter as given (None: none)
    family: str | None  #: the model's family
    num_layers: int  #: the model's blocks


def header(probe: str, options: ProbeOptions, model) -> dict[str, Any]:
    """The :class:`ProbeResult` fields for ``model`` loaded from ``options``."""
    from lazarus_introspect.cli_common import run_meta

    assert options.model is not None  # a required setting
    return run_meta(probe, options.model, options.adapter, model)


def shown_only(factory: Any = dict) -> Any:
    """A result field for ``show`` only (arrays to draw): neither in the JSON nor in the stored result."""
    return attrs.field(factory=factory, eq=False, repr=False, metadata={"stored": False})


def result_json(result) -> dict[str, Any]:
    """A probe result as the JSON it writes: its fields in order, unfilled optional ones (and
    :func:`shown_only` ones) left out."""
    def kept(field, value) -> bool:
        meta = field.metadata
        if not meta.get("stored", True):
            return False
        if value is None and meta.get("optional"):
            return meta.get("present_with") is not None and getattr(result, meta["present_with"]) is not None
        return True

    return {field.name: attrs.asdict(value, recurse=True, filter=kept) if attrs.has(type(value)) else value
            for field in attrs.fields(type(result)) if kept(field, value := getattr(result, field.name))}
