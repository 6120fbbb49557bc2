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
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(strict_json(row) + "\n" for row in kept))
        os.replace(tmp, self.path)


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


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Draw train and eval loss against step from ``metrics_path`` into ``png_path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
    evals = [(r["step"], r["loss"]) for r in rows if r.get("split") == "eval" and "loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        axes.plot([s for s, _ in train], [v for _, v in train], label="train loss", color="tab:blue", linewidth=1.5)
    if evals:
        axes.plot([s for s, _ in evals], [v for _, v in evals], label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy loss (nats/token)")
    axes.set_title(title or "Training loss")
    axes.grid(alpha=0.3)
    if train or evals:
        axes.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    os.replace(tmp, png_path)
    return png_path
