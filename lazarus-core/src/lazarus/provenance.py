"""Provenance: the ``lazarus.json`` every output directory carries.

Checkpoint writers call :func:`collect` for the record and :func:`write` to put it next to their
files; :func:`for_model` fills in the source model of a model returned by ``lazarus.load_model``.
The record (all keys always present, null when unknown)::

    {
      "schema": 1,
      "created": "2026-01-01T00:00:00Z",
      "lazarus_version": "0.1.0",
      "plugins": {"lazarus-families": "0.1.0", ...},      # loaded plugins and their versions
      "mlx_version": "0.32.4",
      "source_model": {"model": "org/name or path", "path": "...", "family": "llama",
                       "weights_sha256": {"model.safetensors": "<hex>"}},
      "config_sha256": "<hex of the written config.json>",
      "adapter_config_sha256": "<hex>",
      "data_sha256": {"train.jsonl": "<hex>"},
      "git_sha": "<commit of the lazarus source checkout>", "git_dirty": false,
      ...extra keys the writer adds (e.g. "command", "trainer")
    }
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILENAME = "lazarus.json"
SCHEMA = 1

_hash_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, cached in-process by (path, size, mtime) since weight files are large."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-able object in canonical form (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_or_object(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
        return sha256_file(value)
    return sha256_json(value)


def git_sha(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: the lazarus source), or (None, None)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def plugin_versions() -> dict[str, str]:
    """Loaded plugins and their distribution versions."""
    from lazarus.plugins import LOADED, get_registry

    return {r.distribution: r.version for r in get_registry().plugins.values() if r.status == LOADED}


def mlx_version() -> str | None:
    try:
        import mlx.core as mx

        return getattr(mx, "__version__", None)
    except ImportError:
        return None


def base_record() -> dict:
    """What every record holds whatever was made: schema, time, versions, git commit."""
    from lazarus import __version__

    sha, dirty = git_sha()
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lazarus_version": __version__,
        "plugins": plugin_versions(),
        "mlx_version": mlx_version(),
        "git_sha": sha,
        "git_dirty": dirty,
    }


def collect(*, source_model: str | None = None, source_path: str | os.PathLike | None = None,
            family: str | None = None, weight_files: Iterable[str | os.PathLike] = (),
            config: dict | str | os.PathLike | None = None, adapter_config: dict | str | os.PathLike | None = None,
            data_files: Iterable[str | os.PathLike] = (), **extra: Any) -> dict:
    """The provenance record for an output directory.

    ``source_model``: hub id or path the work started from; ``weight_files``: its safetensors files
    (hashed); ``config`` / ``adapter_config``: a dict or a file path (hashed); ``data_files``:
    training/eval data (hashed). ``extra`` keys are added as given (JSON-able values).
    """
    weights = {Path(f).name: sha256_file(f) for f in weight_files}
    record = base_record()
    record.update({
        "source_model": None if source_model is None and not weights else {
            "model": source_model,
            "path": str(Path(source_path).absolute()) if source_path is not None else None,
            "family": family,
            "weights_sha256": weights,
        },
        "config_sha256": _hash_or_object(config),
        "adapter_config_sha256": _hash_or_object(adapter_config),
        "data_sha256": {Path(f).name: sha256_file(f) for f in data_files},
    })
    record.update(extra)
    return record


def for_model(model, **kwargs: Any) -> dict:
    """:func:`collect` with the source filled in from ``model.source`` (set by ``load_model``)."""
    source = getattr(model, "source", None)
    if source is not None:
        kwargs.setdefault("source_model", source.model)
        kwargs.setdefault("source_path", source.path)
        kwargs.setdefault("family", source.family)
        kwargs.setdefault("weight_files", source.weight_files)
    return collect(**kwargs)


def write(output_dir: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as ``output_dir/lazarus.json`` atomically (temp file, then rename)."""
    from lazarus.io import write_text

    return write_text(Path(output_dir) / FILENAME, json.dumps(record, indent=2, default=str) + "\n")


def read(directory: str | os.PathLike) -> dict | None:
    """The ``lazarus.json`` of ``directory``, or None when it has none."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _same_directory(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and bool(a and b) and Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def recorded_base_differs(directory: str | os.PathLike, source) -> str | None:
    """The base model that ``directory``'s ``lazarus.json`` names when it is not the model described
    by ``source`` (a :class:`lazarus.models.transformer.ModelSource`), else None.

    Same when the recorded model names the same directory or the same hub id, or when the weight
    files have the same names and hashes (a copy of the base elsewhere); unknown counts as same."""
    try:
        record = read(directory)
    except (OSError, ValueError):
        return None
    recorded = (record or {}).get("source_model") if isinstance(record, dict) else None
    if not isinstance(recorded, dict) or source is None:
        return None
    name = recorded.get("model") or recorded.get("path")
    if name == source.model or _same_directory(recorded.get("path"), source.path):
        return None
    hashes = recorded.get("weights_sha256") or {}
    if not hashes:
        return None
    files = {Path(f).name: f for f in source.weight_files}
    if set(files) == set(hashes) and all(sha256_file(files[n]) == h for n, h in hashes.items()):
        return None
    return str(name)
