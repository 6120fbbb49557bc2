"""Every probe through the CLI, on every family and with an adapter, checking what its JSON says.

Each run is ``lazarus introspect NAME --model M [--adapter DIR] ... --json FILE`` on a tiny real
checkpoint; the checks are about meaning (shapes follow the model, probabilities are
probabilities, the last lens layer is the model's prediction, patching layer 0 at the changed
token restores the clean run, ...), not just that the command exited 0.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import FAMILIES

PROBES = ["logit-lens", "tuned-lens", "probe", "patch", "ablate", "steer", "attention", "neurons", "embeddings"]
PROMPT = "The cat sat on the mat"
CLEAN, CORRUPTED = "The cat sat on the mat", "The hat sat on the mat"
LABELLED = [("The sun is up and it is day", "day"), ("The sun was on the sea", "day"),
            ("It is day and the sun is out", "day"), ("We sat in the sun", "day"),
            ("The moon is up and it is night", "night"), ("It was dark in the night", "night"),
            ("The night was cold and dark", "night"), ("We sat in the dark night", "night")]


def _inputs(tmp_path):
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in LABELLED))
    (tmp_path / "pos.txt").write_text("I love it\nIt is good\n")
    (tmp_path / "neg.txt").write_text("I hate it\nIt is bad\n")
    (tmp_path / "train.txt").write_text("The cat sat on the mat. The dog ran in the sun. " * 4)
    return data


def run_probe(cli, name, model_dir, tmp_path, adapter=None, extra=()):
    """Run one probe with small settings; returns its JSON."""
    data = _inputs(tmp_path)
    base = ["introspect", name, "--model", model_dir] + (["--adapter", adapter] if adapter else [])
    args = {
        "logit-lens": ["-p", PROMPT, "--position", "-1", "--position", "2", "--top-k", "3", "--track", " the"],
        "tuned-lens": ["--translators", tmp_path / "tl", "--train-text", tmp_path / "train.txt", "--steps", "8",
                       "--lr", "1e-4", "--seq-len", "16", "-p", PROMPT],
        "probe": ["--data", data, "--steps", "100", "--save", tmp_path / "direction"],
        "patch": ["--clean", CLEAN, "--corrupted", CORRUPTED, "--answer", "#10", "--wrong", "#11"],
        "ablate": ["-p", PROMPT, "--mode", "mean", "--max-tokens", "2"],
        "steer": ["-p", "The cat", "--positive", tmp_path / "pos.txt", "--negative", tmp_path / "neg.txt",
                  "--layer", "0", "--coef", "0", "--coef", "8", "--normalize", "--max-tokens", "3"],
        "attention": ["-p", PROMPT, "--with-patterns"],
        "neurons": ["-p", PROMPT, "-p", "The sun is up", "--top-k", "4"],
        "embeddings": ["--data", data],
    }[name]
    return cli.json(*base, *args, *extra)


def check_probe(name, result, model, tokenizer):
    """What every probe's JSON must mean for ``model``."""
    layers, heads = model.args.num_hidden_layers, model.args.num_attention_heads
    assert result["probe"] == name and result["num_layers"] == layers
    if name in {"logit-lens", "tuned-lens"}:
        assert [e["position"] for e in result["positions"]][-1] == (2 if name == "logit-lens" else len(result["tokens"]) - 1)
        for entry in result["positions"]:
            assert len(entry["layers"]) == layers
            for layer in entry["layers"]:
                probs = [t["prob"] for t in layer["top"]]
                assert probs == sorted(probs, reverse=True) and 0 <= sum(probs) <= 1 + 1e-5
            if name == "logit-lens":  # the last layer of the plain lens is the model's own output
                assert entry["layers"][-1]["top"][0]["id"] == entry["final_prediction"]["id"]
                assert entry["emergence_layer"] is not None and 0 <= entry["emergence_layer"] < layers
        if name == "tuned-lens":
            losses = result["training"]["losses"]
            assert len(losses) == layers and losses[0]["kl_after"] < losses[0]["kl_before"]
            assert losses[-1]["kl_before"] == losses[-1]["kl_after"] == pytest.approx(0.0, abs=1e-5)
    elif name == "probe":
        assert result["labels"] == ["day", "night"] and len(result["layers"]) == layers
        assert all(0 <= r["test_accuracy"] <= 1 and 0 <= r["train_accuracy"] <= 1 for r in result["layers"])
        assert result["train_size"] + result["test_size"] == len(LABELLED)
        assert result["saved"]["layer"] == result["best_layer"]
    elif name == "patch":
        length = len(result["clean_tokens"])
        changed = [i for i, (a, b) in enumerate(zip(result["clean_tokens"], result["corrupted_tokens"], strict=True)) if a != b]
        assert len(changed) == 1
        for component in ("resid", "attn_out", "mlp_out"):
            grid = result["scores"][component]
            assert len(grid) == layers and all(len(row) == length for row in grid)
        # layer 0's residual at the changed token is all that differs: patching it restores the clean run
        assert result["scores"]["resid"][0][changed[0]] == pytest.approx(1.0, abs=1e-3)
        assert all(abs(v) < 1e-3 for i, v in enumerate(result["scores"]["resid"][0]) if i != changed[0])
    elif name == "ablate":
        assert len(result["effects"]) == layers * (heads + 2)
        assert {e["kind"] for e in result["effects"]} == {"head", "attn", "mlp"}
        for effect in result["effects"]:
            assert 0 <= effect["prob"] <= 1
            assert isinstance(effect["answer"], str) and effect["answer_changed"] == (effect["answer"] != result["baseline_answer"])
            assert effect["prob_change"] == pytest.approx(effect["prob"] - result["baseline_prob"], abs=1e-6)
    elif name == "steer":
        zero, strong = result["runs"]
        assert zero["coefficient"] == 0 and zero["steered"] == zero["unsteered"] and not zero["changed"]
        assert strong["unsteered"] == zero["unsteered"]
        assert result["direction"]["norm"] == pytest.approx(1.0, rel=1e-4)
    elif name == "attention":
        assert len(result["heads"]) == layers * heads
        length = len(result["tokens"])
        for head in result["heads"]:
            assert 0 <= head["mean_entropy"] <= math.log(length) + 1e-4
            weights = [t["weight"] for t in head["queries"][0]["top"]]
            assert weights == sorted(weights, reverse=True) and sum(weights) <= 1 + 1e-4
        for pattern in result["patterns"].values():
            for head_rows in pattern:
                for query, row in enumerate(head_rows):  # causal rows of probabilities
                    assert sum(row) == pytest.approx(1.0, abs=1e-4)
                    assert all(abs(v) < 1e-6 for v in row[query + 1:])
    elif name == "neurons":
        assert len(result["layers"]) == layers
        for entry in result["layers"]:
            assert entry["num_neurons"] == model.args.intermediate_size and len(entry["neurons"]) == 4
            peaks = [n["max_activation"] for n in entry["neurons"]]
            assert peaks == sorted(peaks, reverse=True)
            for n in entry["neurons"]:
                assert n["max_activation"] >= n["mean_activation"]
                assert n["promotes"][0]["logit"] >= n["suppresses"][0]["logit"]
    elif name == "embeddings":
        assert [row["layer"] for row in result["layers"]] == ["embed", *range(layers)]
        n = len(LABELLED)
        assert len(result["cosine"]) == n and all(result["cosine"][i][i] == pytest.approx(1.0, abs=1e-4) for i in range(n))
        for row in result["layers"]:
            assert 0 <= row["nearest_centroid_accuracy"] <= 1 and -1 <= row["silhouette"] <= 1
            assert len(row["pca"]) == n and sum(row["pca_explained_variance"]) <= 1 + 1e-6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", PROBES)
def test_probe_runs_on_every_family(cli, checkpoint, loaded, tmp_path, family, name):
    model, tokenizer = loaded(family)
    result = run_probe(cli, name, checkpoint(family), tmp_path)
    assert result["family"] == family and result["adapter"] is None
    check_probe(name, result, model, tokenizer)


# numbers that move when the adapter changes the model
_SENSITIVE = {
    "logit-lens": lambda r: r["positions"][0]["layers"][-1]["top"][0]["prob"],
    "tuned-lens": lambda r: r["training"]["losses"][0]["kl_before"],
    "probe": lambda r: None,  # accuracies on 8 prompts can coincide; checked for running only
    "patch": lambda r: r["clean_logit_diff"],
    "ablate": lambda r: r["baseline_prob"],
    "steer": lambda r: None,  # greedy text of a random model may coincide
    "attention": lambda r: r["heads"][0]["mean_entropy"],
    "neurons": lambda r: r["layers"][-1]["neurons"][0]["max_activation"],
    "embeddings": lambda r: r["layers"][-1]["mean_cosine"],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", PROBES)
def test_probe_runs_with_an_adapter_and_sees_it(cli, checkpoint, loaded, adapter_dir, tmp_path, family, name):
    model, tokenizer = loaded(family)
    (tmp_path / "base").mkdir()
    (tmp_path / "adapted").mkdir()
    base = run_probe(cli, name, checkpoint(family), tmp_path / "base")
    adapted = run_probe(cli, name, checkpoint(family), tmp_path / "adapted", adapter=adapter_dir(family))
    assert adapted["adapter"] == str(adapter_dir(family)) and adapted["family"] == family
    check_probe(name, adapted, model, tokenizer)
    value = _SENSITIVE[name](base)
    if value is not None:
        assert _SENSITIVE[name](adapted) != pytest.approx(value, rel=1e-6, abs=1e-9)


def test_report_dir_is_self_contained_html_with_pngs(cli, checkpoint, tmp_path):
    out = tmp_path / "report"
    code, output = cli("introspect", "patch", "--model", checkpoint("llama"), "--clean", CLEAN, "--corrupted", CORRUPTED,
                       "--answer", "#10", "--wrong", "#11", "--report", out)
    assert code == 0, output
    html = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["patch_attn_out.png", "patch_mlp_out.png", "patch_resid.png"]
    assert html.count("data:image/png;base64,") == 3
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert json.loads((out / "report.json").read_text())["probe"] == "patch"
    assert all((out / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_user_errors_are_one_line_exit_2(cli, checkpoint, tmp_path):
    model = checkpoint("llama")
    (tmp_path / "same.txt").write_text("The cat\n")
    (tmp_path / "one-label.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    cases = [
        (["patch", "--clean", "The cat", "--corrupted", "The cat sat on", "--answer", "#1", "--wrong", "#2"], "same length"),
        (["logit-lens", "-p", PROMPT, "--position", "99"], "out of range"),
        (["attention", "-p", PROMPT, "--layers", "7"], "out of range"),
        (["steer", "-p", "x"], "--direction"),
        (["steer", "-p", "x", "--positive", tmp_path / "same.txt", "--negative", tmp_path / "same.txt"], "differ"),
        (["probe", "--data", tmp_path / "one-label.jsonl"], "single label"),
        (["embeddings", "-p", "only one"], "at least two"),
        (["tuned-lens", "--translators", tmp_path / "none"], "--train-text"),
        (["tuned-lens", "--translators", tmp_path / "none", "-p", PROMPT], "not found"),
    ]
    for args, message in cases:
        code, output = cli("introspect", args[0], "--model", model, *args[1:])
        assert code == 2, (args, output)
        assert message in output and "Traceback" not in output
    # a failed run leaves what the user had untouched
    keep = tmp_path / "keep.json"
    keep.write_text("old results\n")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.html").write_text("old page")
    code, _ = cli("introspect", "logit-lens", "--model", model, "-p", PROMPT, "--position", "99", "--json", keep,
                  "--report", tmp_path / "rep")
    assert code == 2 and keep.read_text() == "old results\n"
    assert (tmp_path / "rep" / "report.html").read_text() == "old page"
    code, output = cli("introspect", "no-such-probe", "--model", model)
    assert code != 0 and "no-such-probe" in output


def test_logit_lens_sees_what_a_tiny_sft_run_taught(cli, checkpoint, tmp_path):
    """An adapter from `lazarus train sft` is read through --adapter: the taught token rises."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "The cat sat on", "completion": " the mat"}) + "\n"
                            for _ in range(16)))
    code, output = cli("train", "sft", "--model", checkpoint("llama"), "--data", data, "--output", tmp_path / "sft",
                       "--max-steps", "4", "--learning-rate", "2e-3", "--lr-schedule", "constant", "--num-layers", "-1")
    assert code == 0, output
    args = ["introspect", "logit-lens", "--model", checkpoint("llama"), "-p", "The cat sat on", "--track", " the"]
    base = cli.json(*args)["positions"][0]["layers"][-1]
    tuned = cli.json(*args, "--adapter", tmp_path / "sft")["positions"][0]["layers"][-1]
    assert tuned["track_prob"] > max(0.5, 10 * base["track_prob"])
    assert tuned["track_rank"] == 1
