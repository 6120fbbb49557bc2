"""Training callbacks: the loop calls out at named moments, so progress UIs, run loggers and early
stopping live outside it (as mlx-lm's ``TrainingCallback`` and TRL's ``TrainerCallback``).

A callback is any object with some of these methods (missing ones are skipped); each receives the
trainer (its ``config``, ``model``, ``output``, ``world`` ...) and what just happened:

- ``on_step(trainer, step, loss)``: after every optimizer step (``loss``: this rank's mean loss of it);
- ``on_log(trainer, row)``: after a train-metrics row is written to metrics.jsonl;
- ``on_eval(trainer, row)``: after an evaluation row is written;
- ``on_checkpoint(trainer, step, path)``: after a resumable checkpoint is written.

Callbacks run on every rank (``trainer.world.is_main`` says whether this is the one that writes).
Pass them as ``Trainer(config, callbacks=[...])``, or let a plugin contribute them to every run
with the ``register_training_callbacks(register)`` hook: ``register(factory)``, where
``factory(trainer)`` returns a callback or None (a callback class taking the trainer will do).
A callback that raises stops the run, as an error in the loop would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the moments a callback may implement
EVENTS = ("on_step", "on_log", "on_eval", "on_checkpoint")


class TrainerCallback:
    """A base with every method doing nothing; subclass it and override what you need."""

    def on_step(self, trainer, step: int, loss: float) -> None:
        """After optimizer step ``step`` (1-based)."""

    def on_log(self, trainer, row: dict[str, Any]) -> None:
        """After a train row (``split == "train"``) went to metrics.jsonl."""

    def on_eval(self, trainer, row: dict[str, Any]) -> None:
        """After an eval row (``split == "eval"``) went to metrics.jsonl."""

    def on_checkpoint(self, trainer, step: int, path: Path) -> None:
        """After the checkpoint of ``step`` was written to ``path``."""


class Callbacks:
    """The callbacks of one run, called in order; ``fire(event, trainer, ...)``."""

    def __init__(self, callbacks=()) -> None:
        self.callbacks = list(callbacks)

    def fire(self, event: str, trainer, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(trainer, *args)


def plugin_callbacks(trainer) -> list:
    """The callbacks installed plugins contribute to this run (``register_training_callbacks``)."""
    from lazarus.plugins import get_registry

    factories: list = []
    get_registry().pm.hook.register_training_callbacks(register=factories.append)
    return [callback for callback in (factory(trainer) for factory in factories) if callback is not None]
