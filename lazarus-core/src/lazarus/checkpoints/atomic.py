"""Atomic directory writes: a checkpoint appears whole or not at all.

:func:`atomic_directory` hands out a fresh temporary directory next to the target. When the
``with`` block finishes, every file is fsynced and the temporary directory is renamed onto the
target (the previous target is moved aside first and deleted only after the new one is in
place). If the block raises, or the process dies, the temporary directory is discarded and the
previous checkpoint is untouched.

A save killed half-way leaves a ``.NAME.tmp-PID-*`` directory next to the target; the next save
to the same target deletes it (see :func:`recover_interrupted`).

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
from collections.abc import Callable, Iterator
from pathlib import Path

from lazarus.errors import LazarusError


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


def recover_interrupted(target: Path) -> None:
    """Clean up after saves to ``target`` whose process died (killed, power loss).

    A dead writer's temporary directory is deleted. If it died between moving the previous
    checkpoint aside and renaming the new one in, ``target`` is missing and the set-aside previous
    checkpoint is moved back. Writers still running are left alone (their pid is in the name).
    """
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-")
    for entry in sorted(target.parent.iterdir()) if target.parent.is_dir() else ():
        match = pattern.match(entry.name)
        if not match or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not target.exists():
            os.rename(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    recover_interrupted(target)
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
