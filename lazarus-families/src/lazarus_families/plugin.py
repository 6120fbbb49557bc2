"""Registers the model families of this distribution (one module per family, imported on use)."""
