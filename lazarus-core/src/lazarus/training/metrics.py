"""Training metrics: rows appended to ``OUTPUT/metrics.jsonl`` and the loss-curve PNG drawn from them.

Each row is one JSON object with ``split`` ("train" or "eval") and ``step``; train rows add
``loss``, ``learning_rate``, ``tokens_per_second``, ``grad_norm``...; eval rows add ``loss``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """Appends metric rows to a JSONL file (a no-op on ranks other than 0: ``enabled=False``)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(strict_json(row) + "\n")

    def drop_after(self, step: int) -> None:
        """Forget rows past ``step``: a resumed run repeats those steps and logs them again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= step]
        from lazarus.io import write_text

        write_text(self.path, "".join(strict_json(row) + "\n" for row in kept))


def strict_json(row: dict) -> str:
    """One JSON line that every JSON reader accepts: NaN and infinities become ``null``."""
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(row), allow_nan=False)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All rows of a metrics.jsonl (a truncated last line, from a killed run, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


#: how metric keys read on the progress bar, in summaries and on loss.png
METRIC_LABELS = {
    "loss": "loss",
    "reward_mean": "reward",
    "accuracy": "accuracy",
    "rewards/accuracy": "pref accuracy",
    "rewards/margin": "margin",
    "classifier/accuracy": "classifier accuracy",
    "answer/loss": "answer loss",
}


def metric_label(key: str) -> str:
    """The short name people read for a metric key (``rewards/accuracy`` -> ``pref accuracy``)."""
    return METRIC_LABELS.get(key, key)


def headline_text(row: dict, keys, sep: str = "  ") -> str:
    """``reward 0.450  accuracy 0.300``: the ``keys`` of ``row`` that it has, as numbers."""
    parts = []
    for key in keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{metric_label(key)} {value:.3f}")
    return sep.join(parts)


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "",
                    loss_label: str = "loss", headline: tuple[str, ...] = ()) -> Path:
    """Draw :func:`loss_figure` of ``metrics_path`` into ``png_path``; returns the path."""
    import matplotlib.pyplot as plt

    figure = loss_figure(read_metrics(metrics_path), title=title, loss_label=loss_label, headline=headline)
    from lazarus.io import atomic_path

    png_path = Path(png_path)
    try:
        with atomic_path(png_path, suffix=png_path.suffix) as tmp:
            figure.savefig(tmp)
    finally:
        plt.close(figure)
    return png_path


def loss_figure(rows: list[dict], *, title: str = "", loss_label: str = "loss", headline: tuple[str, ...] = ()):
    """A matplotlib figure: train and eval loss against step (y label ``loss_label``), and below it
    the ``headline`` metrics other than the loss (train rows solid, eval rows dashed).

    Every point has a marker, so a run with one logged step still shows it, and steps are whole numbers.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in rows if not r.get("diverged")]

    def series(split: str, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in rows if r.get("split") == split and _number(r.get(key))]

    others = [k for k in headline if k != "loss" and (series("train", k) or series("eval", k))]
    panels = 1 + bool(others)
    figure, grid = plt.subplots(panels, 1, figsize=(7, 4.2 if panels == 1 else 6.4), dpi=110, sharex=True,
                                squeeze=False)
    axes_list = [a[0] for a in grid]
    loss_axes = axes_list[0]
    drawn = False
    for split, colour, style in (("train", "tab:blue", "-"), ("eval", "tab:orange", "--")):
        points = series(split, "loss")
        if points:
            loss_axes.plot([s for s, _ in points], [v for _, v in points], style, label=f"{split} loss",
                           color=colour, marker="o", markersize=4 if len(points) > 30 else 6, linewidth=1.5)
            drawn = True
    loss_axes.set_ylabel(loss_label)
    loss_axes.set_title(title or "Training loss")
    if not drawn:
        loss_axes.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=loss_axes.transAxes)
    if panels == 2:
        axes = axes_list[1]
        colours = ["tab:green", "tab:red", "tab:purple", "tab:brown"]
        for index, key in enumerate(others):
            colour = colours[index % len(colours)]
            for split, style in (("train", "-"), ("eval", "--")):
                points = series(split, key)
                if points:
                    axes.plot([s for s, _ in points], [v for _, v in points], style, color=colour, marker="o",
                              markersize=4 if len(points) > 30 else 6, linewidth=1.5,
                              label=f"{split} {metric_label(key)}")
        axes.set_ylabel(", ".join(metric_label(k) for k in others))
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    for axes in axes_list:
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        if steps and max(steps) == min(steps):  # one step: give the lone point some room
            axes.set_xlim(min(steps) - 1, max(steps) + 1)
    axes_list[-1].set_xlabel("optimizer step")
    figure.tight_layout()
    return figure


def _number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
