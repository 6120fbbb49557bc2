"""Atomic writes, the one implementation: a file or a directory appears whole or not at all.

Files: :func:`atomic_path` hands out a temporary path beside the target (``.NAME.XXXX`` plus an
optional suffix, so writers that pick a format by extension still see it); when the ``with`` block
finishes the file is fsynced, given the mode a plain ``open(path, "w")`` would (mkstemp makes 0600
files), renamed onto the target and the directory fsynced. If the block raises, the temporary file
is deleted and the previous target is untouched. :func:`write_text` and :func:`write_bytes` are the
usual uses.

Directories: :func:`atomic_directory` hands out a fresh temporary directory next to the target.
When the ``with`` block finishes, every file is fsynced and the temporary directory is renamed onto
the target (the previous target is moved aside first and deleted only after the new one is in
place). If the block raises, or the process dies, the temporary directory is discarded and the
previous checkpoint is untouched.

A save killed half-way leaves a ``.NAME.tmp-PID-*`` directory next to the target (and, killed
between its two renames, a ``.NAME.old-PID-*`` one with the target missing); the next save to the
same target, and every reader through :func:`recover_output`, repairs that (see
:func:`recover_interrupted`).

Files already in the target that the new checkpoint does not write and that the format does not
own (a training log, a README) are carried over as hard links, so saving a checkpoint into a
directory never deletes the user's other files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from lazarus.errors import LazarusError, LazarusWarning


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open directories; the data files are what matter
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem or no hard links: copy instead
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, owned: Callable[[str], bool]) -> None:
    for entry in old.iterdir():
        if (new / entry.name).exists() or owned(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # alive but not ours, or no way to tell: leave it alone
        return True
    return True


def _checkpoint_names(directory: Path) -> set[str]:
    root = directory / "checkpoints"
    return {p.name for p in root.glob("step-*")} if root.is_dir() else set()


def _hidden_copies(target: Path) -> list[tuple[Path, str, int]]:
    """``(path, "tmp" | "old", writer pid)`` of the hidden copies saves to ``target`` leave behind."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-")
    found = []
    for entry in sorted(target.parent.iterdir()) if target.parent.is_dir() else ():
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found.append((entry, match.group(1), int(match.group(2))))
    return found


def recover_interrupted(target: Path) -> list[str]:
    """Clean up after saves to ``target`` whose process died (killed, power loss); returns notes
    (one line each) on what was restored or kept.

    A writer that died between moving the previous ``target`` aside (``.NAME.old-PID-*``) and
    renaming its new copy in (``.NAME.tmp-PID-*``, complete by then) left ``target`` missing: the new
    copy is renamed into place (or, when there is none, the previous one is moved back). A dead
    writer's other temporary directories are deleted. A set-aside copy holding checkpoints that
    ``target`` lacks is never deleted: it is renamed to the visible ``NAME.recovered-PID``. Writers
    still running are left alone (their pid is in the name).
    """
    target = Path(target)
    notes: list[str] = []
    dead = [(path, kind, pid) for path, kind, pid in _hidden_copies(target) if not _pid_alive(pid)]
    olds = {pid: path for path, kind, pid in dead if kind == "old"}
    if not target.exists() and olds:
        pid, old = max(olds.items(), key=lambda item: item[1].stat().st_mtime)
        complete = next((path for path, kind, p in dead if kind == "tmp" and p == pid), None)
        os.rename(complete or old, target)
        notes.append(f"{target} was missing after an interrupted save; restored it from "
                     f"{(complete or old).name} ({'the new copy' if complete else 'the previous copy'})")
        dead = [entry for entry in dead if entry[0] != (complete or old)]
    for path, kind, pid in dead:
        keep = (kind == "old" or pid in olds) and bool(_checkpoint_names(path) - _checkpoint_names(target))
        if keep:
            visible = target.parent / f"{target.name}.recovered-{pid}"
            if not visible.exists():
                os.rename(path, visible)
                notes.append(f"kept {visible}: an interrupted save left checkpoints there that {target} lacks")
            continue
        shutil.rmtree(path, ignore_errors=True)
    return notes


def recover_output(path: str | os.PathLike, option: str = "") -> Path:
    """For every reader of an output directory (``--resume``, ``--adapter``, ``generate``, ``eval``,
    ``run``): when ``path`` is missing, restore it from the hidden copies an interrupted save left (a
    warning says so) and return it; an existing ``path`` is returned untouched. When ``path`` is
    missing and only a live writer's copies exist, raise :class:`LazarusError` naming them."""
    path = Path(path)
    if path.exists():  # readers change nothing that is in place (writers tidy up, atomic_directory)
        return path
    try:
        notes = recover_interrupted(path.absolute())
    except OSError:
        return path  # a read-only place: nothing to repair, the reader's own error is clearer
    for note in notes:
        warnings.warn(note, LazarusWarning, stacklevel=2)
    if not path.exists():
        live = [p.name for p, _, _ in _hidden_copies(path.absolute())]
        if live:
            raise LazarusError(f"{option + ' ' if option else ''}{path}: missing while a save to it is in "
                               f"progress (copies: {', '.join(live)}); wait for that run to finish")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file (0666 less the umask): for temporary files made
    with ``mkstemp`` (0600) before they are renamed into place, so outputs are readable like others."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path in ``path``'s directory (created if missing); when the block
    finishes, the file written there replaces ``path`` atomically (fsync, the usual mode, rename,
    fsync of the directory). On an exception the temporary file is removed and ``path`` is as it
    was. ``suffix`` ends the temporary name (``".png"`` for a writer that goes by extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 with ``\\n`` line endings to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(target: str | Path, owned: Callable[[str], bool] = lambda name: True
                     ) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``target`` atomically.

    ``owned(name)`` says whether a top-level entry of an existing ``target`` belongs to the
    checkpoint being written (it is then dropped, e.g. stale weight shards); other entries are
    carried over. The default owns everything (the new directory replaces the old one whole).
    Raises :class:`LazarusError` when ``target`` exists and is not a directory.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise LazarusError(f"{target} exists and is not a directory; choose another output path")
    target.parent.mkdir(parents=True, exist_ok=True)
    for note in recover_interrupted(target):
        warnings.warn(note, LazarusWarning, stacklevel=3)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        # mkdtemp makes 0700 directories; give the checkpoint the permissions a mkdir would
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o777 & ~_umask()
        os.chmod(tmp, mode)
        if target.exists():
            _carry_over(target, tmp, owned)
        fsync_tree(tmp)
        if target.exists():
            aside = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, aside)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(aside, target)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
