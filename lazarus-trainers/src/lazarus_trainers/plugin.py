"""Registers the trainers and reward functions of this distribution (imported on use)."""
