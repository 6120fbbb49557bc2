"""Resumable training checkpoints.

Layout of an output directory::

    OUTPUT/
      adapter_config.json, adapters.safetensors, lazarus.json   the final adapter (mlx-lm format)
      metrics.jsonl, loss.png
      checkpoints/
        latest                      name of the newest complete checkpoint ("step-00000200")
        step-00000200/
          adapter_config.json, adapters.safetensors, lazarus.json   (or the hf files of a full fine-tune)
          trainer_state.json        step, trainer name, config, data position, RNG key, counters
          optimizer.safetensors     the optimizer state, flattened ("step", "model.layers.0...m")

A checkpoint directory is written whole into a temporary directory and renamed into place
(:func:`lazarus.io.atomic_directory`); ``latest`` is replaced only afterwards. A
save that dies half-way leaves the previous checkpoint and ``latest`` as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from lazarus.errors import LazarusError

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
#: bumped when the trainer-state layout changes incompatibly
STATE_VERSION = 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _write_text_atomic(path: Path, text: str) -> None:
    from lazarus.io import write_text

    write_text(path, text)


def save_checkpoint(output: str | os.PathLike, step: int, *, write_weights: Callable[[Path], None],
                    optimizer_state: dict[str, Any], state: dict[str, Any], keep: int = 0) -> Path:
    """Write checkpoint ``step`` under ``output/checkpoints/`` atomically and point ``latest`` at it.

    ``write_weights(directory)`` writes the model or adapter files into ``directory``;
    ``optimizer_state`` is a flat ``{key: mx.array}``; ``state`` is JSON-ready. ``keep`` > 0 deletes
    all but the newest ``keep`` checkpoints afterwards. Returns the checkpoint directory.
    """
    import mlx.core as mx

    from lazarus.io import atomic_directory

    root = Path(output) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / checkpoint_name(step)
    with atomic_directory(target) as tmp:
        # weights first: a format writer replaces the files it owns (hf owns every *.safetensors)
        write_weights(tmp)
        mx.eval(list(optimizer_state.values()))
        mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(optimizer_state))
        (tmp / STATE_FILE).write_text(json.dumps({"version": STATE_VERSION, **state}, indent=2) + "\n")
    _write_text_atomic(root / LATEST_FILE, target.name + "\n")
    if keep > 0:
        prune_checkpoints(root, keep)
    return target


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints in ``root`` (never the ``latest`` one)."""
    latest = (root / LATEST_FILE).read_text().strip() if (root / LATEST_FILE).exists() else ""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file())
    for old in steps[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def set_aside_later(root: Path, step: int) -> tuple[list[str], Path | None]:
    """Move the step checkpoints in ``root`` after ``step`` (left by a run that a resume from ``step``
    abandons) into ``root/abandoned-after-step-NNNNNNNN/``, and point ``latest`` at the newest one
    left, so that a later ``--resume OUTPUT`` continues the new run, not the abandoned one.
    Returns the names moved and where they went (``None`` when there were none)."""
    later = sorted(p for p in root.glob("step-*") if p.is_dir() and _step_of(p) > step)
    if not later:
        return [], None
    aside = root / f"abandoned-after-{checkpoint_name(step)}"
    aside.mkdir(exist_ok=True)
    for path in later:
        destination = aside / path.name
        if destination.exists():  # the same step abandoned twice: keep the older copy too
            destination = aside / f"{path.name}-{os.getpid()}"
        os.rename(path, destination)
    kept = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file())
    if kept:
        _write_text_atomic(root / LATEST_FILE, kept[-1].name + "\n")
    else:
        (root / LATEST_FILE).unlink(missing_ok=True)
    return [p.name for p in later], aside


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: itself, or an output directory's latest checkpoint
    (an output directory an interrupted save left hidden is restored first)."""
    from lazarus.io import recover_output

    path = recover_output(path, "--resume")
    if (path / STATE_FILE).is_file():
        return path
    latest = path / CHECKPOINTS_DIR / LATEST_FILE
    if latest.is_file():
        candidate = path / CHECKPOINTS_DIR / latest.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
        raise LazarusError(f"{latest} names {candidate.name}, which is missing or incomplete; pass one of "
                           f"the step-* directories in {latest.parent} to --resume")
    if not path.exists():
        raise LazarusError(f"resume {path}: no such directory", field="resume")
    raise LazarusError(f"resume {path}: not a training checkpoint (no {STATE_FILE}) and not an output "
                       f"directory with {CHECKPOINTS_DIR}/{LATEST_FILE}", field="resume")


def run_directory(checkpoint: str | os.PathLike) -> str | None:
    """The output directory of the run that holds ``checkpoint`` (``RUN/checkpoints/step-N``), as an
    absolute path; None for a checkpoint directory kept elsewhere."""
    path = Path(checkpoint).absolute()
    if path.parent.name == CHECKPOINTS_DIR:
        return str(path.parent.parent)
    return None


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint directory."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise LazarusError(f"{path}: not found; is {checkpoint} a training checkpoint?") from None
    except json.JSONDecodeError as exc:
        raise LazarusError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise LazarusError(f"{path}: unsupported trainer state (version {state.get('version')!r}, "
                           f"this Lazarus reads version {STATE_VERSION})")
    for key in ("step", "trainer", "config"):
        if key not in state:
            raise LazarusError(f"{path}: missing key {key!r}; the checkpoint is incomplete")
    return state


def read_optimizer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The flat optimizer state saved with a checkpoint, as ``{key: mx.array}``."""
    import mlx.core as mx

    path = Path(checkpoint) / OPTIMIZER_FILE
    if not path.is_file():
        raise LazarusError(f"{path}: not found; the checkpoint is incomplete")
    try:
        return dict(cast("dict[str, mx.array]", mx.load(str(path), format="safetensors")))  # (one file: a dict)
    except (RuntimeError, ValueError, OSError) as exc:
        raise LazarusError(f"{path}: cannot read ({' '.join(str(exc).split())}); the file is corrupt") from None


# -- RNG state --------------------------------------------------------------------------------------
def rng_state() -> list[int]:
    """mlx's global random key as two integers (JSON-ready)."""
    import mlx.core as mx

    key = cast("list[mx.array]", mx.random.state)[0]  # (the stub types the state as an object)
    return [int(v) for v in cast("list[int]", key.tolist())]


def set_rng_state(key: list[int]) -> None:
    """Restore mlx's global random key saved by :func:`rng_state`.

    ``mx.random.seed(s)`` sets the key to ``[s >> 32, s & 0xffffffff]``, so seeding with the two
    halves joined puts back exactly the saved key.
    """
    import mlx.core as mx

    high, low = (int(v) for v in key)
    mx.random.seed((high << 32) | low)
