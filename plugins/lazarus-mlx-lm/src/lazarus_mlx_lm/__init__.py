"""lazarus-mlx-lm: every architecture mlx-lm supports, as a Lazarus family (a fallback for model types
no other installed family knows)."""

__version__ = "0.1.0"
