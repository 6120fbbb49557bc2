"""What the lens and patching show a person: a multi-token --track named whole in the figure, whole
layer numbers, one line per layer at 80 columns; patching that says so (and shows raw
differences) when clean and corrupted differences are too close to divide by."""

from __future__ import annotations

import json

import numpy as np

CLEAN, CORRUPTED = "The cat sat on the mat", "The hat sat on the mat"


def test_logit_lens_table_fits_80_columns_one_line_per_layer(lazarus_cli, checkpoint, loaded):
    model, tokenizer = loaded("llama")
    for track in (" B", "#10"):  # two tokens, one token
        result = lazarus_cli("introspect", "logit-lens", "--model", checkpoint("llama"), "--prompt", CLEAN,
                             "--track", track, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "top"])
        body = [line for line in lines[header + 2:] if line.strip()]
        layers = len(model.blocks)
        assert [line.split()[0] for line in body[:layers]] == [str(n) for n in range(layers)]
        assert not body[layers:] or not body[layers].startswith(" " * 4)  # no continuation lines


def test_logit_lens_figure_names_the_whole_multi_token_target(loaded):
    from lazarus_introspect.logit_lens import build_report, logit_lens

    model, tokenizer = loaded("llama")
    result = logit_lens(model, tokenizer, CLEAN, track=" B")
    assert result["track"]["tokens"] == [" ", "B"]
    report = build_report(result, "logit-lens", "t")
    build = next(b for name, b, _ in report.figure_builders if name == "probabilities")
    figure = build()
    axes = figure.axes[0]
    labels = axes.get_legend_handles_labels()[1]
    assert any("' B'" in label for label in labels) and not any("track ' '" in label for label in labels)
    ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    whole = next(line for line in axes.get_lines() if "' B'" in line.get_label())
    expected = [np.exp(layer["track_logprob"]) for layer in result["positions"][-1]["layers"]]
    np.testing.assert_allclose(whole.get_ydata(), expected, rtol=1e-5)  # p(whole target), not its first token


def _gaps(model, tokenizer):
    """Per vocabulary token: clean minus corrupted logit at the last position."""
    import mlx.core as mx

    clean = np.array(model(mx.array([tokenizer.encode(CLEAN)])).astype(mx.float32))[0, -1]
    corrupted = np.array(model(mx.array([tokenizer.encode(CORRUPTED)])).astype(mx.float32))[0, -1]
    return clean - corrupted


def test_patching_warns_and_shows_raw_differences_when_they_are_nearly_equal(lazarus_cli, checkpoint, loaded,
                                                                            tmp_path):
    model, tokenizer = loaded("llama")
    gaps = _gaps(model, tokenizer)
    order = np.argsort(gaps)
    steps = np.diff(gaps[order])
    near = int(np.argmax((steps > 1e-4) & (steps < 0.05)))  # two answers whose clean-corrupted gaps match
    answer, wrong = int(order[near + 1]), int(order[near])
    assert 1e-4 < gaps[answer] - gaps[wrong] < 0.05
    out = tmp_path / "near.json"
    result = lazarus_cli("introspect", "patch", "--model", checkpoint("llama"), "--clean", CLEAN, "--corrupted",
                         CORRUPTED, "--answer", f"#{answer}", "--wrong", f"#{wrong}", "--json", out)
    assert result.exit_code == 0, result.output
    assert "Warning: the clean and corrupted logit differences are nearly equal" in result.stderr
    assert "patched difference log p(answer) - log p(wrong)" in result.stdout
    data = json.loads(out.read_text())
    assert data["nearly_equal"] is True
    # far apart: fractions, no warning
    answer, wrong = int(order[-1]), int(order[0])
    far = lazarus_cli("introspect", "patch", "--model", checkpoint("llama"), "--clean", CLEAN, "--corrupted",
                      CORRUPTED, "--answer", f"#{answer}", "--wrong", f"#{wrong}")
    assert far.exit_code == 0, far.output
    assert "Warning" not in far.stderr and "restored fraction of the clean difference" in far.stdout
