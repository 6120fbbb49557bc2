"""Registers the introspection probes of this distribution (imported on use)."""
