"""Atomic directory writes and their recovery: moved to :mod:`lazarus.io` (one implementation of
atomic writes for the whole toolkit); these names stay importable from here."""

from __future__ import annotations

from lazarus.io import atomic_directory, file_mode, fsync_tree, recover_interrupted, recover_output

__all__ = ["atomic_directory", "file_mode", "fsync_tree", "recover_interrupted", "recover_output"]
