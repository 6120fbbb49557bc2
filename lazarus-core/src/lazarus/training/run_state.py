"""What a training run produces and keeps while it runs: :class:`TrainResult`, the stop request
of Ctrl-C/SIGTERM, the logging window's sums and the means of summed metrics."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import attrs
import mlx.core as mx


@attrs.define
class TrainResult:
    """What a finished (or interrupted) run produced."""

    output: Path
    step: int  #: optimizer steps done
    total_steps: int
    interrupted: bool = False
    checkpoint: Path | None = None  #: the last resumable checkpoint written
    first_eval_loss: float | None = None
    last_eval_loss: float | None = None
    last_train_loss: float | None = None
    resume_command: str | None = None
    metrics: list[dict] = attrs.Factory(list)


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to save and stop after the current
    step (state is only consistent between steps); a second one aborts at once."""

    def __init__(self, console) -> None:
        self.requested = False
        self.console = console
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.console is not None:
            self.console.print("[yellow]Stopping after this step and saving a checkpoint "
                               "(press Ctrl-C again to quit without saving)...[/]")


def metric_means(aux: dict, count: float) -> dict[str, float]:
    """Logged means of summed metrics: each over the loss's item ``count``, or over its own summed
    ``NAME:count`` when the loss returned one (see :meth:`Trainer.loss`)."""
    means = {}
    for name, value in aux.items():
        if name.endswith(":count"):
            continue
        own = aux.get(f"{name}:count")
        denominator = float(own.item()) if own is not None else float(count)
        means[name] = float(value.item()) / max(denominator, 1.0)
    return means


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _new_window() -> dict:
    """Sums over the steps since the last train-metrics row (time counts training steps only)."""
    return {"total": mx.array(0.0), "count": mx.array(0.0), "aux": {}, "tokens": 0, "seconds": 0.0, "steps": 0}
