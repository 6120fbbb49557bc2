"""Registers the expert models of this distribution (imported on use)."""
