"""What checkpoint formats share: the format protocol, the adapter checkpoint record, provenance.

A checkpoint format (registered with ``register_checkpoint_formats``; ``entry`` names an instance
of a :class:`CheckpointFormat` subclass) reads and/or writes one on-disk layout. What it holds
decides its base class and the type its ``read`` returns: an :class:`AdapterFormat` reads an
:class:`AdapterCheckpoint` (loaded onto a base model), a :class:`ModelFormat` reads a whole model as
``(model, tokenizer, config)``; :func:`lazarus.load_model` asks the registered model formats which
one a path is. A write-only format (GGUF export) implements ``detect`` and ``write`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

#: provenance file written into every checkpoint directory
PROVENANCE_FILE = "lazarus.json"


@attrs.define
class AdapterCheckpoint:
    """An adapter as read from disk: its config, its tensors (model keys) and its provenance."""

    config: Any  # lazarus.adapters.AdapterConfig
    weights: dict[str, Any]  # key -> mx.array
    path: Path
    format: str
    provenance: dict[str, Any] = attrs.Factory(dict)


class CheckpointFormat:
    """Base of a checkpoint format: ``name``, ``holds`` and the methods its spec flags promise.
    Readable formats subclass :class:`AdapterFormat` or :class:`ModelFormat` (their typed ``read``)."""

    name: str = ""
    holds: str = "adapter"  # or "model"

    def detect(self, path: Path) -> bool:
        """Whether ``path`` looks like a checkpoint of this format (cheap: file names only)."""
        return False

    def write(self, path: str | Path, *args: Any, **options: Any) -> Path:
        """Write a checkpoint at ``path`` atomically (with ``lazarus.json``); returns the path.
        A format names the options it takes (``*args, **options`` lets it)."""
        raise NotImplementedError(f"checkpoint format {self.name!r} cannot write")

    def owned(self, name: str) -> bool:
        """Whether a top-level file ``name`` of an existing checkpoint directory belongs to this
        format (replaced on save) rather than to the user (carried over)."""
        return name == PROVENANCE_FILE


class AdapterFormat(CheckpointFormat):
    """A format that stores an adapter; ``read`` returns an :class:`AdapterCheckpoint`."""

    holds = "adapter"

    def read(self, path: str | Path, *, num_blocks: int | None = None, **options) -> AdapterCheckpoint:
        """Read the adapter at ``path``. ``num_blocks`` is the block count of the model it will be
        loaded on (formats that store it ignore it)."""
        raise NotImplementedError(f"checkpoint format {self.name!r} cannot read")


class ModelFormat(CheckpointFormat):
    """A format that stores a whole model; ``read`` returns ``(model, tokenizer, config)`` with
    ``config`` the model's Hugging Face ``config.json`` dict (what :func:`lazarus.load_model` returns)."""

    holds = "model"

    def read(self, path: str | Path, *, dtype=None, **options) -> tuple[Any, Any, dict]:
        """Read the model at the local directory or file ``path``; ``dtype`` (an ``mx.Dtype``, a
        name or None) converts floating weights."""
        raise NotImplementedError(f"checkpoint format {self.name!r} cannot read")


def provenance_record(directory: Path, fmt: str, holds: str, *, model=None,
                      fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``lazarus.json`` record for a checkpoint being written in ``directory``.

    Built by :func:`lazarus.provenance.for_model` (source model, versions, git sha ...), plus the
    checkpoint format, what it holds and the SHA-256 of every file written. ``fields`` are the
    caller's additions: keys :func:`lazarus.provenance.collect` knows (``source_model``,
    ``weight_files``, ``config``, ``adapter_config``, ``data_files`` ...) are hashed as it does;
    any other key is stored as given.
    """
    from lazarus import provenance

    kwargs: dict[str, Any] = {"checkpoint_format": fmt, "holds": holds, **(fields or {})}
    record = provenance.for_model(model, **kwargs) if model is not None else provenance.collect(**kwargs)
    record["files_sha256"] = {p.name: provenance.sha256_file(p) for p in sorted(directory.iterdir())
                              if p.is_file() and p.name != PROVENANCE_FILE}
    return record


def write_provenance(directory: Path, fmt: str, holds: str, *, model=None,
                     fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``lazarus.json`` into ``directory`` (after the other files) and return the record."""
    import os

    from lazarus import provenance

    record = provenance_record(directory, fmt, holds, model=model, fields=fields)
    written = provenance.write(directory, record)
    # written through a private temp file (0600): give it the permissions of the other files
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(written, 0o666 & ~mask)
    return record


def read_provenance(directory: Path) -> dict[str, Any]:
    """The ``lazarus.json`` of a checkpoint directory, or ``{}`` when it has none (e.g. written by mlx-lm)."""
    from lazarus import provenance

    try:
        return provenance.read(directory) or {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged record must not block loading
        return {}
