"""Prompt representations per layer: cosine similarity, PCA and how well they cluster by label.

Each prompt is represented at every layer (the embeddings, then the residual stream after each
block) by its last token's vector or the mean over its tokens. Per layer: the mean cosine
similarity within and between labels, the silhouette score (cosine distance) and leave-one-out
nearest-centroid accuracy by label, and a 2-D PCA (numpy SVD) with its explained variance.
"""

from __future__ import annotations

import attrs
import click

from lazarus.errors import LazarusError
from lazarus.operations import operation
from lazarus.training.config import setting
from lazarus_introspect import activations
from lazarus_introspect.cli_common import emit, load, read_labelled
from lazarus_introspect.probe_base import ProbeOptions, ProbeResult, check_outputs, header, result_json


def cosine_matrix(x):
    """Pairwise cosine similarity (N, N) of the rows of ``x`` (N, D)."""
    import numpy as np

    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def silhouette(similarity, labels) -> float | None:
    """Mean silhouette score with cosine distance ``1 - similarity``; None with fewer than 2 labels."""
    import numpy as np

    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        return None
    distance = 1.0 - similarity
    scores = []
    for i in range(len(labels)):
        same = labels == labels[i]
        same[i] = False
        if not same.any():
            scores.append(0.0)  # a singleton cluster scores 0, as in the usual definition
            continue
        a = distance[i, same].mean()
        b = min(distance[i, labels == c].mean() for c in classes if c != labels[i])
        scores.append(float((b - a) / max(a, b, 1e-12)))
    return float(np.mean(scores))


def nearest_centroid_accuracy(x, labels) -> float | None:
    """Leave-one-out accuracy of assigning each row to the closest (cosine) label centroid."""
    import numpy as np

    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        return None
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sums = {c: unit[labels == c].sum(axis=0) for c in classes}
    counts = {c: int((labels == c).sum()) for c in classes}
    correct = 0
    for i in range(len(labels)):
        best, best_sim = None, -np.inf
        for c in classes:
            total, n = sums[c], counts[c]
            if c == labels[i]:
                total, n = total - unit[i], n - 1
            if n == 0:
                continue
            centroid = total / n
            sim = float(unit[i] @ centroid / max(np.linalg.norm(centroid), 1e-12))
            if sim > best_sim:
                best, best_sim = c, sim
        correct += best == labels[i]
    return correct / len(labels)


def pca_2d(x):
    """``(points (N, 2), explained variance ratio of the two components)`` by SVD of centred ``x``."""
    import numpy as np

    centred = x - x.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    points = centred @ vt[:2].T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    variance = singular ** 2
    ratio = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return points, [float(r) for r in ratio]


def layer_geometry(states, labels) -> list[dict]:
    """Per layer of ``states`` (layers, N, D): similarities, clustering scores and PCA points."""
    import numpy as np

    labels_arr = np.asarray(labels)
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    same = (labels_arr[:, None] == labels_arr[None]) & off_diagonal
    different = labels_arr[:, None] != labels_arr[None]
    rows = []
    for index, x in enumerate(states):
        similarity = cosine_matrix(x)
        points, ratio = pca_2d(x)
        rows.append({
            "layer": "embed" if index == 0 else index - 1,
            "mean_cosine": float(similarity[off_diagonal].mean()) if off_diagonal.any() else None,
            "within_label_cosine": float(similarity[same].mean()) if same.any() else None,
            "between_label_cosine": float(similarity[different].mean()) if different.any() else None,
            "silhouette": silhouette(similarity, labels),
            "nearest_centroid_accuracy": nearest_centroid_accuracy(x, labels),
            "pca_explained_variance": ratio,
            "pca": points,
            "cosine": similarity,
        })
    return rows


@attrs.define(kw_only=True)
class EmbeddingsOptions(ProbeOptions):
    """The options of ``lazarus introspect embeddings`` (and the keys of a recipe stage)."""

    data: str | None = setting(None, 'Labelled prompts, JSONL: {"text": ..., "label": ...} per line.', metavar="FILE",
                               type=click.Path(exists=True, dir_okay=False))
    prompt: tuple[str, ...] = setting((), "Unlabelled prompt(s); repeatable.", flags=("-p",))
    pool: str = setting("last", "Represent a prompt by its last token or the mean over its tokens.",
                        choices=("last", "mean"))
    layer: int = setting(-1, "Layer whose cosine-similarity matrix is drawn and written (-1 = last).")


@attrs.frozen(kw_only=True)
class EmbeddingsResult(ProbeResult):
    """Per layer (``"embed"``, then 0, 1, ...) the geometry of :func:`layer_geometry` (PCA points as
    lists, without the cosine matrices), and the cosine matrix of ``similarity_layer``."""

    prompts: list[str]
    labels: list[str]
    pool: str
    similarity_layer: int
    layers: list[dict]  #: {"layer", "mean_cosine", ..., "silhouette", "nearest_centroid_accuracy", "pca", ...}
    cosine: list[list[float]]
    best_silhouette: float | None  #: the largest silhouette over the layers (None: one label) -- the key figure


def _records(options: EmbeddingsOptions) -> list[dict]:
    """The prompts of ``--data`` (labelled) and ``--prompt`` (label ``-``); fewer than two is a LazarusError."""
    records = read_labelled(options.data) if options.data else []
    records += [{"text": p, "label": "-"} for p in options.prompt]
    if len(records) < 2:
        raise LazarusError("give at least two prompts, with --data FILE (labelled JSONL) or --prompt TEXT")
    return records


def _check(options: EmbeddingsOptions) -> None:
    check_outputs(options)
    _records(options)


def _show(result: EmbeddingsResult, options: EmbeddingsOptions) -> None:
    import numpy as np

    from lazarus_introspect.report import Report, heatmap, line_plot, scatter_grid

    rows, texts, labels, drawn = result.layers, result.prompts, result.labels, result.similarity_layer
    report = Report(probe="embeddings", title=f"Prompt representations — {options.model}", data=result_json(result))
    table = report.table(f"{len(texts)} prompts, {len(set(labels))} label(s), pooling: {result.pool}",
                         ["layer", "mean cos", "within-label cos", "between-label cos", "silhouette",
                          "nearest-centroid acc", "PCA var (PC1, PC2)"])
    for row in rows:
        table.add_row(row["layer"], row["mean_cosine"], row["within_label_cosine"], row["between_label_cosine"],
                      row["silhouette"], row["nearest_centroid_accuracy"],
                      ", ".join(f"{v:.3f}" for v in row["pca_explained_variance"]))
    report.add_figure("pca", lambda: scatter_grid([(f"layer {row['layer']}", np.asarray(row["pca"])) for row in rows],
                                                  labels, title="PCA of prompt representations per layer"),
                      "First two principal components of the prompt representations, coloured by label")
    short = [t if len(t) <= 20 else t[:19] + "…" for t in texts]
    report.add_figure("cosine", lambda: heatmap(np.asarray(result.cosine), title=f"cosine similarity at layer {drawn}",
                                                xlabel="prompt", ylabel="prompt", xticklabels=short, yticklabels=short,
                                                colorbar="cosine", vmin=-1, vmax=1, cmap="RdBu_r"),
                      f"Pairwise cosine similarity of the prompts at layer {drawn}")
    if len(set(labels)) > 1:
        report.add_figure("clustering", lambda: line_plot(
            {"silhouette": [r["silhouette"] for r in rows],
             "nearest-centroid accuracy": [r["nearest_centroid_accuracy"] for r in rows]},
            x=list(range(-1, result.num_layers)), title="clustering by label per layer (-1 = embeddings)",
            xlabel="layer", ylabel="score"), "Silhouette and nearest-centroid accuracy per layer")
    emit(report, options.json, options.report)


@operation(options=EmbeddingsOptions, metric="best_silhouette", name="embeddings", check=_check, show=_show,
           load=load)
def embeddings_probe(model, tokenizer, options: EmbeddingsOptions) -> EmbeddingsResult:
    """Per-layer prompt representations: cosine similarity, PCA scatter, clustering by label."""
    records = _records(options)
    drawn = activations.check_layers(model, [options.layer], "--layer")[0]
    texts, labels = [r["text"] for r in records], [r["label"] for r in records]
    states = activations.prompt_representations(model, tokenizer, texts, pool=options.pool, include_embed=True)
    rows = layer_geometry(states, labels)
    silhouettes = [row["silhouette"] for row in rows if row["silhouette"] is not None]
    return EmbeddingsResult(**header("embeddings", options, model), prompts=texts, labels=labels, pool=options.pool,
                            similarity_layer=drawn,
                            layers=[{k: v.tolist() if k == "pca" else v for k, v in row.items() if k != "cosine"}
                                    for row in rows],
                            cosine=rows[drawn + 1]["cosine"].tolist(),
                            best_silhouette=max(silhouettes) if silhouettes else None)


#: the click command (derived from the operation), for code that imports it
embeddings_command = embeddings_probe.command("embeddings")
