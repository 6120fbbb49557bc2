"""Reports: the rich table on the terminal, ``--json FILE`` and ``--report DIR`` from one object.

A probe builds a :class:`Report` holding its JSON-ready numbers (``data``), the tables it prints
and the figures it draws. :meth:`Report.print` shows the tables, :func:`write_json` writes
``data`` and :meth:`Report.write_dir` writes ``report.html`` (self-contained: PNGs inlined as
base64, no network assets), every figure as a PNG and ``report.json`` with the same ``data``.
Everything is written to a temporary file or folder first and moved into place, so a failure
never leaves a half-written file where the user's old one was.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs

from lazarus.errors import LazarusError


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy / mlx scalars and arrays turned into plain Python; NaN and inf become None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise LazarusError(f"{path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    from lazarus.io import atomic_path

    with ExitStack() as stack:
        try:
            tmp = stack.enter_context(atomic_path(parent / path.name))
        except OSError as exc:
            raise LazarusError(f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is "
                               "writable") from None
        tmp.write_bytes(payload)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns the path."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    _atomic_write_bytes(Path(path), (text + "\n").encode())
    return Path(path)


def format_number(value: Any, digits: int = 4) -> str:
    """How numbers look in tables: floats with ``digits`` significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


@attrs.define
class Table:
    """A titled table; cells are already formatted strings (the JSON keeps the raw numbers)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = attrs.Factory(list)

    def add_row(self, *cells: Any) -> None:
        self.rows.append([format_number(c) for c in cells])


@attrs.define
class Figure:
    """A rendered PNG with its file name and caption."""

    name: str
    png: bytes
    caption: str = ""


@attrs.define
class Report:
    """What one probe run shows: ``data`` (JSON), tables, figures and free-text notes."""

    probe: str
    title: str
    data: dict = attrs.Factory(dict)
    tables: list[Table] = attrs.Factory(list)
    figures: list[Figure] = attrs.Factory(list)
    figure_builders: list = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    def table(self, title: str, columns: list[str]) -> Table:
        """A new table, appended to the report; fill it with ``add_row``."""
        table = Table(title, list(columns))
        self.tables.append(table)
        return table

    def add_figure(self, name: str, build, caption: str = "") -> None:
        """Add a figure: ``build()`` returns a matplotlib figure; it becomes ``name.png``.

        Figures are drawn only when a report folder is written, so ``--json`` alone costs no plotting.
        """
        self.figure_builders.append((name, build, caption))

    def render_figures(self) -> list[Figure]:
        """Draw every figure added so far (once) and return them as PNGs."""
        import io

        plt = _pyplot()
        for name, build, caption in self.figure_builders[len(self.figures):]:
            figure = build()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            self.figures.append(Figure(name, buffer.getvalue(), caption))
        return self.figures

    # -- output ---------------------------------------------------------------------------------
    def print(self, console=None) -> None:
        """Print the notes and tables with rich."""
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable

        console = console or Console()
        for table in self.tables:
            rich_table = RichTable(title=table.title, box=box.SIMPLE_HEAD)
            for index, column in enumerate(table.columns):
                # short columns (numbers, ranks) keep one line; the long ones fold into what is left
                width = max([len(column)] + [len(row[index]) for row in table.rows if index < len(row)])
                rich_table.add_column(column, overflow="fold", no_wrap=width <= 12, min_width=min(width, 12))
            for row in table.rows:
                rich_table.add_row(*[rich_escape(cell) for cell in row])
            console.print(rich_table)
        for note in self.notes:
            console.print(note, markup=False, highlight=False)

    def html(self) -> str:
        """The self-contained HTML page: tables, then figures inlined as base64 PNGs."""
        esc = html.escape
        self.render_figures()
        parts = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
            "font-family:monospace;font-size:13px}th{background:#f0f0f0}caption{font-weight:bold;"
            "text-align:left}img{max-width:100%}figure{margin:1.5em 0}pre{background:#f7f7f7;"
            "padding:1em;white-space:pre-wrap}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        meta = {k: v for k, v in self.data.items() if isinstance(v, (str, int, float)) or v is None}
        if meta:
            parts.append("<table><caption>Run</caption>")
            parts += [f"<tr><th>{esc(str(k))}</th><td>{esc(format_number(v))}</td></tr>"
                      for k, v in meta.items()]
            parts.append("</table>")
        for note in self.notes:
            parts.append(f"<pre>{esc(note)}</pre>")
        for table in self.tables:
            parts.append(f"<table><caption>{esc(table.title)}</caption><tr>")
            parts += [f"<th>{esc(c)}</th>" for c in table.columns]
            parts.append("</tr>")
            for row in table.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for figure in self.figures:
            encoded = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(figure.name)}" src="data:image/png;base64,{encoded}">'
                         f"<figcaption>{esc(figure.caption or figure.name)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write_dir(self, directory: str | Path) -> Path:
        """Write ``report.html``, ``report.json`` and one PNG per figure into ``directory``.

        Files are built in a temporary sibling folder and then moved in, so the folder's other
        files are kept and nothing is half-written if rendering fails.
        """
        with output_dir(directory, "--report") as staging:
            self.render_figures()
            (staging / "report.html").write_text(self.html(), encoding="utf-8")
            text = json.dumps(to_jsonable(self.data), indent=2, allow_nan=False)
            (staging / "report.json").write_text(text + "\n", encoding="utf-8")
            for figure in self.figures:
                (staging / f"{figure.name}.png").write_bytes(figure.png)
        return Path(directory)


@contextmanager
def output_dir(directory: str | Path, option: str):
    """Yield a temporary folder beside ``directory``; on success its files are moved into ``directory``.

    Files already in ``directory`` with other names are kept; on failure nothing is touched.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise LazarusError(f"{option} {directory} is a file; give a folder")
    parent = directory.parent if str(directory.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
    except OSError as exc:
        raise LazarusError(f"cannot write {option} {directory}: {exc.strerror or exc}") from None
    try:
        yield staging
        directory.mkdir(exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def rich_escape(text: str) -> str:
    """Escape rich markup brackets so token strings like '[/INST]' print as they are."""
    from rich.markup import escape

    return escape(text)


# -- figures --------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless, and never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot_text(text) -> str:
    """``text`` safe for matplotlib: control characters escaped, ``$`` not read as maths."""
    text = str(text)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text.replace("$", r"\$")


def heatmap(matrix, *, title: str, xlabel: str, ylabel: str, xticklabels=None, yticklabels=None,
            colorbar: str = "", cmap: str = "viridis", vmin=None, vmax=None, center_zero: bool = False):
    """A matplotlib figure showing ``matrix`` (rows = y) as a heatmap with labelled axes."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * cols, 16), min(1.5 + 0.35 * rows, 14)))
    if center_zero:
        bound = float(np.nanmax(np.abs(matrix))) if matrix.size else 1.0
        bound = bound or 1.0
        vmin, vmax, cmap = -bound, bound, "RdBu_r"
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colorbar)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(cols))
        ax.set_xticklabels([plot_text(t) for t in xticklabels], rotation=60, ha="right", fontsize=8)
    if yticklabels is not None:
        ax.set_yticks(range(rows))
        ax.set_yticklabels([plot_text(t) for t in yticklabels], fontsize=8)
    return fig


def line_plot(series: dict[str, list[float]], *, title: str, xlabel: str, ylabel: str, x=None):
    """A matplotlib figure with one line per entry of ``series``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    from matplotlib.ticker import MaxNLocator

    for label, values in series.items():
        xs = x if x is not None else list(range(len(values)))
        ax.plot(xs, [float("nan") if v is None else v for v in values], marker="o", label=plot_text(label))
    if x is None or all(isinstance(v, int) for v in x):  # layers, steps: no 2.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def scatter_grid(panels: list[tuple[str, Any]], labels: list[str], *, title: str):
    """Small multiples: one 2-D scatter per ``(panel title, points (N, 2))``, coloured by label."""
    import numpy as np

    plt = _pyplot()
    count = max(len(panels), 1)
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.axis("off")
            continue
        name, points = panels[index]
        points = np.asarray(points)
        for c_index, cls in enumerate(classes):
            mask = np.array([label == cls for label in labels])
            ax.scatter(points[mask, 0], points[mask, 1], s=14, color=colours(c_index % 10), label=plot_text(cls))
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if classes and panels:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar_chart_figure(labels: list[str], values: list[float], *, title: str, ylabel: str):
    """A matplotlib figure with one bar per label (positive red, negative blue)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(2 + 0.4 * len(labels), 16), 4))
    ax.bar(range(len(values)), values, color=["#c0392b" if v >= 0 else "#2e6da4" for v in values])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([plot_text(label) for label in labels], rotation=60, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return fig


def scatter_figure(series: dict[str, tuple[list[float], list[float]]], *, title: str, xlabel: str, ylabel: str):
    """A matplotlib scatter with one colour per entry ``name -> (xs, ys)`` and the y = x line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    values = [v for xs, ys in series.values() for v in (*xs, *ys) if v is not None and math.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    for name, (xs, ys) in series.items():
        ax.scatter(xs, ys, s=12, label=plot_text(name))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
