"""Output paths: check before any work that a command can write where it was told to.

Every command that writes calls :func:`check_output_path` on its output *before* loading a model or
reading data, so a wrong ``--output`` costs a second, not a training run::

    from lazarus.paths import check_output_path
    out = check_output_path(output, kind="dir", option="--output")

The CLI turns what can still go wrong while writing (a disk that fills up, a permission that changes)
into one line through :func:`write_error_message`; writers use temp + rename
(:mod:`lazarus.checkpoints.atomic`), so such a failure leaves the previous output as it was.
This module imports only the standard library.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from lazarus.errors import LazarusError

#: errors of the machine rather than of the program: shown as one line (exit 2), never a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                 errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_output_path(path: str | os.PathLike, kind: str = "dir", option: str = "--output") -> Path:
    """Check that ``path`` can be written as a directory (``kind="dir"``) or a file (``kind="file"``).

    Raises :class:`LazarusError` (one line naming ``option`` and the path) when the path is empty,
    when an existing entry has the wrong kind (a file where a directory is needed or the reverse),
    when a parent on the way is a file, or when the nearest existing parent cannot be written (no
    permission, read-only file system, ``/proc``). The test writes and removes a temporary entry in
    that parent, so it answers for root and for odd file systems alike; nothing else is created.
    Returns the absolute path. Paths with spaces and non-ASCII characters are fine.
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    if path is None or not str(path).strip():
        raise LazarusError(f"{option}: empty path; give a {'directory' if kind == 'dir' else 'file'} to write")
    target = Path(path).expanduser().absolute()
    if kind == "dir" and target.exists() and not target.is_dir():
        raise LazarusError(f"{option} {path}: a file of that name exists; a directory is needed, "
                           "choose another path (or remove the file)")
    if kind == "file" and target.is_dir():
        raise LazarusError(f"{option} {path}: is a directory; give a file name (e.g. {Path(path) / 'out.json'})")
    existing = _nearest_existing(target if kind == "dir" else target.parent)
    if not existing.is_dir():
        raise LazarusError(f"{option} {path}: {existing} is a file, so nothing can be created under it; "
                           "choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=".lazarus-write-test-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise LazarusError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc}); "
                           "choose a directory you can write to") from None
    return target


def write_error_message(exc: BaseException) -> str | None:
    """One line for an error of the machine rather than of the program, met while reading or
    writing files: a full disk (``ENOSPC``, or mlx's "Unable to write" when saving tensors), no
    permission, a read-only file system, a missing or wrong-kind path. ``None`` for anything else
    (a bug: let its traceback show)."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        if exc.errno in _FULL:
            where = f" {exc.filename}" if exc.filename else ""
            return (f"cannot write{where}: {exc.strerror or exc}; free some space or write elsewhere "
                    "(the previous output, if any, is unchanged)")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = f" {exc.filename}" if exc.filename else ""
            return f"cannot write{where}: {exc.strerror or exc}; choose a path you can write to"
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and "Unable to write" in text:
        return (f"cannot write: {text} (is the disk full?); free some space or write elsewhere "
                "(the previous output, if any, is unchanged)")
    return None
