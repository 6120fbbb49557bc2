"""An example third-party Lazarus plugin. Read plugin.py first; docs/plugins.md explains each hook."""

__version__ = "0.1.0"
