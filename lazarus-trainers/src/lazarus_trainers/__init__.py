"""lazarus-trainers: a Lazarus plugin distribution."""

__version__ = "0.1.0"
