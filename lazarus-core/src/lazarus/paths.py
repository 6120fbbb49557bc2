"""Output paths: check before any work that a command can write where it was told to.

Every command that writes calls :func:`check_output_path` on its output *before* loading a model or
reading data, so a wrong ``--output`` costs a second, not a training run::

    from lazarus.paths import check_output_path
    out = check_output_path(output, kind="dir", option="--output")

The CLI turns what can still go wrong while writing (a disk that fills up, a permission that changes)
into one line through :func:`write_error_message`; writers use temp + rename
(:mod:`lazarus.io`), so such a failure leaves the previous output as it was.
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
    from lazarus.options import utf8_problem

    problem = utf8_problem(str(path))
    if problem:  # mlx, safetensors and JSON cannot name such a file: refuse before any work
        raise LazarusError(f"{option} {os.fsencode(str(path))!r}: {problem}; choose a UTF-8 path")
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


def _unreadable(name) -> bool:
    """Whether ``name`` exists but this process may not read it (or list it, for a directory)."""
    try:
        path = os.fspath(name)
        if os.path.exists(path):
            return not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0))
        parent = os.path.dirname(os.path.abspath(path))  # a file in a directory we may not search
        return os.path.isdir(parent) and not os.access(parent, os.X_OK)
    except (TypeError, ValueError, OSError):
        return False


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
        if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename and _unreadable(exc.filename):
            return (f"cannot read {exc.filename}: {exc.strerror or exc}; give yourself read permission "
                    "(chmod u+r) or use a copy you can read")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = f" {exc.filename}" if exc.filename else ""
            return f"cannot write{where}: {exc.strerror or exc}; choose a path you can write to"
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and ("Unable to write" in text or text.startswith("[save_gguf]")):
        return (f"cannot write: {text} (is the disk full?); free some space or write elsewhere "
                "(the previous output, if any, is unchanged)")
    return None


# -- one live run per output directory ----------------------------------------------------------------
LOCK_FILE = ".lazarus.lock"
#: what flock says when another process holds the lock (anything else: the file system cannot lock)
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


class OutputLock:
    """A lock on an output directory that one run holds while it writes there.

    ``OUTPUT/.lazarus.lock`` holds the pid and host of the run and an OS lock (``flock``), which the
    kernel drops when the process dies, however it dies; so a lock left by a dead run is taken over
    (:meth:`acquire` returns a note saying so) and a live run's lock is refused. The file stays,
    emptied, when the run ends. Re-entrant within one process (a recipe running stages in-process).
    """

    _held: dict[str, OutputLock] = {}

    def __init__(self, directory: str | os.PathLike, option: str = "--output") -> None:
        self.directory = Path(directory).absolute()
        self.option = option
        self._fd: int | None = None
        self._depth = 0
        #: the lock this process already holds on the same directory (re-entered, not re-taken)
        self._shared: OutputLock | None = None
        self.note: str | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> str | None:
        """Take the lock; raise :class:`LazarusError` naming the holder when a live run holds it.
        Returns a one-line note when a dead run's lock was taken over, else None."""
        key = str(self.directory.resolve()) if self.directory.exists() else str(self.directory)
        held = OutputLock._held.get(key)
        if held is not None:
            held._depth += 1
            self._fd, self._depth, self._shared = None, 0, held
            return None
        self._shared = None
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected from each other there
            return None
        import json
        import socket

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _HELD:  # a file system without locks (some network mounts)
                    os.close(fd)
                    return f"{self.path}: this file system cannot lock ({exc.strerror}); runs are not kept apart here"
                holder = _holder_text(previous)
                raise LazarusError(f"{self.option} {self.directory}: another run is writing there ({holder}); "
                                   "wait for it to end, stop it, or choose another output directory") from None
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": int(__import__("time").time())}).encode() + b"\n")
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        OutputLock._held[str(self.directory.resolve())] = self
        if previous:
            return (f"took over {self.path} from a run that ended without releasing it "
                    f"({_holder_text(previous)})")
        return None

    def check(self) -> None:
        """Refuse now, creating nothing, when a live run holds the lock (:meth:`acquire` takes it later)."""
        if not self.path.is_file() or str(self.directory.resolve()) in OutputLock._held:
            return
        try:
            import fcntl
        except ImportError:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _HELD:
                    return
                holder = _holder_text(os.read(fd, 4096).decode("utf-8", "replace").strip())
                raise LazarusError(f"{self.option} {self.directory}: another run is writing there ({holder}); "
                                   "wait for it to end, stop it, or choose another output directory") from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the lock back (the file is emptied, not deleted: deleting it would race a new run)."""
        if self._shared is not None:
            self._shared._depth -= 1
            self._shared = None
            return
        if self._fd is None:
            return
        if self._depth > 0:
            self._depth -= 1
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
            OutputLock._held = {k: v for k, v in OutputLock._held.items() if v is not self}

    def __enter__(self) -> OutputLock:
        self.note = self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_text(content: str) -> str:
    import json

    try:
        holder = json.loads(content)
        return f"pid {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown"
