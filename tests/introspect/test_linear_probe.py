"""Linear probes find a label a model was trained to compute, and only chance on shuffled labels.

The tiny llama is trained here (60 steps of plain MLX: the task is learnt within ~25) to answer " he" after prompts
that start with " sun" and " we" after prompts that start with " at"; the filler words after the
marker are drawn from the same pool for both sets, so the last token's residual knows the label
only through what attention carried there.
"""

from __future__ import annotations

import json
import random
import shutil
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lazarus_introspect.activations import prompt_representations
from lazarus_introspect.linear_probe import fit_logistic, predict, probe_layers

FILLER = [" the", " a", " on", " in", " and", " of", " to", " it", " is", " was", " you"]
MARKERS = {"sunny": " sun", "at": " at"}
ANSWERS = {"sunny": " he", "at": " we"}


def _prompts(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for index in range(count):
        label = "sunny" if index % 2 else "at"
        records.append({"text": MARKERS[label] + "".join(rng.choice(FILLER) for _ in range(5)), "label": label})
    return records


@pytest.fixture(scope="module")
def trained(loaded, checkpoint, tmp_path_factory):
    """The tiny llama trained to tell the two prompt sets apart, also saved as a checkpoint."""
    import lazarus

    model, tokenizer, _ = lazarus.load_model(checkpoint("llama"))
    train = _prompts(256, seed=0)
    ids = mx.array([tokenizer.encode(r["text"]) for r in train], dtype=mx.int32)
    answers = mx.array([tokenizer.encode(ANSWERS[r["label"]], add_special_tokens=False)[0] for r in train])

    def loss_fn(net, batch, target):
        return nn.losses.cross_entropy(net(batch)[:, -1], target).mean()

    optimizer = optim.Adam(learning_rate=1e-2)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, target):
        loss, grads = loss_and_grad(model, batch, target)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    before = loss_fn(model, ids, answers).item()
    for _ in range(60):
        pick = mx.array(rng.choice(len(train), 16, replace=False))
        mx.eval(step(ids[pick], answers[pick]))
    after = loss_fn(model, ids, answers).item()
    assert before > 3.0 and after < 0.05  # it has learned the task
    directory = tmp_path_factory.mktemp("trained") / "llama-trained"
    shutil.copytree(checkpoint("llama"), directory)
    mx.save_safetensors(str(directory / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    return model, tokenizer, directory


def test_probe_finds_the_trained_label_and_not_shuffled_labels(trained):
    model, tokenizer, _ = trained
    records = _prompts(160, seed=1)  # prompts the model was not trained on
    states = prompt_representations(model, tokenizer, [r["text"] for r in records])
    labels = [r["label"] for r in records]
    real = probe_layers(states, labels, test_fraction=0.3, seed=0)
    assert real["chance"] == pytest.approx(0.5)
    assert real["layers"][real["best_layer"]]["test_accuracy"] >= 0.95
    shuffled = list(np.random.default_rng(5).permutation(labels))
    control = probe_layers(states, shuffled, test_fraction=0.3, seed=0)
    best_control = max(row["test_accuracy"] for row in control["layers"])
    assert best_control <= 0.72  # about chance (0.5) on 48 held-out prompts


def test_logistic_regression_separates_a_linear_rule_and_generalises():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    y = (x @ rng.normal(size=20) > 0).astype(int)
    fit = fit_logistic(x[:300], y[:300], 2)
    assert (predict(fit, x[300:]) == y[300:]).mean() >= 0.9


def test_probe_cli_saves_a_direction_that_steers(trained, cli, tmp_path):
    _, tokenizer, directory = trained
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _prompts(80, seed=2)) + "\n")
    result = cli.json("introspect", "probe", "--model", directory, "--data", data, "--save", tmp_path / "dir")
    assert result["labels"] == ["at", "sunny"] and result["examples"] == 80
    assert len(result["layers"]) == 2
    best = result["layers"][result["best_layer"]]
    assert best["test_accuracy"] >= 0.9
    meta = json.loads((tmp_path / "dir" / "direction.json").read_text())
    assert meta["layer"] == result["best_layer"] and meta["positive_label"] == "sunny"
    assert meta["mean_separation"] > 0  # "sunny" prompts lie further along the direction
    provenance = json.loads((tmp_path / "dir" / "lazarus.json").read_text())
    assert provenance["source_model"]["family"] == "llama" and "data.jsonl" in provenance["data_sha256"]

    prompt = " at the a on"
    plain = cli.json("introspect", "steer", "--model", directory, "--direction", tmp_path / "dir", "-p", prompt,
                     "--coef", "0", "--max-tokens", "4")
    run = plain["runs"][0]
    assert run["steered"] == run["unsteered"] and not run["changed"]
    assert run["unsteered"].startswith(ANSWERS["at"])
    # pushing an " at" prompt far enough along the direction toward "sunny" flips the trained answer;
    # pushing it the other way keeps it
    scale = meta["mean_separation"]
    pushed = cli.json("introspect", "steer", "--model", directory, "--direction", tmp_path / "dir", "-p", prompt,
                      "--coef", str(-10 * scale), "--coef", str(20 * scale), "--max-tokens", "4")
    away, toward = pushed["runs"]
    assert away["steered"].startswith(ANSWERS["at"])
    assert toward["steered"].startswith(ANSWERS["sunny"]) and toward["changed"]


def test_shuffled_labels_flag_and_bad_data_lines(trained, cli, tmp_path):
    _, _, directory = trained
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _prompts(80, seed=3)) + "\n")
    control = cli.json("introspect", "probe", "--model", directory, "--data", data, "--shuffle-labels")
    assert control["shuffled_labels"] and max(r["test_accuracy"] for r in control["layers"]) <= 0.8
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b"\n')
    code, output = cli("introspect", "probe", "--model", directory, "--data", bad)
    assert code == 2 and "bad.jsonl:2" in output and "Traceback" not in output



def test_embeddings_cluster_by_the_trained_label(trained):
    from lazarus_introspect.embeddings import layer_geometry

    model, tokenizer, _ = trained
    records = _prompts(40, seed=4)
    states = prompt_representations(model, tokenizer, [r["text"] for r in records], include_embed=True)
    rows = layer_geometry(states, [r["label"] for r in records])
    assert [r["layer"] for r in rows] == ["embed", 0, 1]
    last = rows[-1]
    assert last["nearest_centroid_accuracy"] >= 0.9 and last["silhouette"] > 0
    assert last["within_label_cosine"] > last["between_label_cosine"]
