"""The core's own plugin: built-in adapters and checkpoint formats register here through the same
hooks as any third-party plugin. Listed by ``lazarus plugins list --all`` as ``lazarus-core``."""

from __future__ import annotations
