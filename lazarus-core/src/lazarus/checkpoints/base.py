"""What checkpoint formats share: the format protocol, the adapter checkpoint record, provenance.

A checkpoint format (registered with ``register_checkpoint_formats``; ``entry`` names an instance
of a :class:`CheckpointFormat` subclass) reads and/or writes one on-disk layout. ``holds`` says
whether it stores an ``"adapter"`` (loaded onto a base model) or a whole ``"model"``.
"""

from __future__ import annotations

import datetime
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
    """Base of a checkpoint format: ``name``, ``holds`` and the methods its spec flags promise."""

    name: str = ""
    holds: str = "adapter"  # or "model"

    def detect(self, path: Path) -> bool:
        """Whether ``path`` looks like a checkpoint of this format (cheap: file names only)."""
        return False

    def read(self, path: str | Path, **options):
        raise NotImplementedError(f"checkpoint format {self.name!r} cannot read")

    def write(self, path: str | Path, **options) -> Path:
        raise NotImplementedError(f"checkpoint format {self.name!r} cannot write")

    def owned(self, name: str) -> bool:
        """Whether a top-level file ``name`` of an existing checkpoint directory belongs to this
        format (replaced on save) rather than to the user (carried over)."""
        return name == PROVENANCE_FILE


def _versions() -> dict[str, Any]:
    from importlib import metadata

    from lazarus import __version__

    out: dict[str, Any] = {"lazarus": __version__}
    try:
        out["mlx"] = metadata.version("mlx")
    except metadata.PackageNotFoundError:  # pragma: no cover - mlx is a dependency
        out["mlx"] = None
    try:
        from lazarus.plugins import get_registry

        out["plugins"] = {r.name: r.version for r in get_registry().plugins.values() if r.status == "loaded"}
    except Exception:  # provenance must never break a save
        out["plugins"] = {}
    return out


def provenance_record(directory: Path, fmt: str, holds: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The ``lazarus.json`` content for a checkpoint being written in ``directory``.

    Uses ``lazarus.provenance.base_record()`` when the core provides it; adds the format, what the
    checkpoint holds, the SHA-256 of each file written, and the caller's ``extra`` fields
    (source model and its hash, adapter/data hashes, training config ...), which win on conflicts.
    """
    from lazarus.checkpoints.atomic import sha256_file

    record: dict[str, Any] = {}
    try:
        from lazarus import provenance as shared  # the models engineer's helpers, when present

        base = getattr(shared, "base_record", None)
        if callable(base):
            record.update(base())
    except ImportError:
        pass
    if not record:
        record.update(_versions())
        record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["format"] = fmt
    record["holds"] = holds
    record["files"] = {p.name: sha256_file(p) for p in sorted(directory.iterdir())
                       if p.is_file() and p.name != PROVENANCE_FILE}
    record.update(extra or {})
    return record


def write_provenance(directory: Path, fmt: str, holds: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Write ``lazarus.json`` into ``directory`` (after the other files) and return it."""
    record = provenance_record(directory, fmt, holds, extra)
    (directory / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record


def read_provenance(directory: Path) -> dict[str, Any]:
    """The ``lazarus.json`` of a checkpoint directory, or ``{}`` when it has none (e.g. written by mlx-lm)."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
