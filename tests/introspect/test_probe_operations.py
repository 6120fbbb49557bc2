"""Probes written as operations (lazarus.operations): each one runs from Python (``op.run(...)``)
and returns a typed result whose declared metric field is its key figure; the same probes are
recipe stages whose metric reaches the run table and stage.json, and whose result fields later
stages refer to."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from lazarus.errors import LazarusError
from lazarus.operations import Operation, result_dict, result_fields

PROMPT = "The cat sat on the mat"
LABELLED = [("The sun is up and it is day", "day"), ("The sun was on the sea", "day"),
            ("It is day and the sun is out", "day"), ("We sat in the sun", "day"),
            ("The moon is up and it is night", "night"), ("It was dark in the night", "night"),
            ("The night was cold and dark", "night"), ("We sat in the dark night", "night")]


@pytest.fixture
def llama(checkpoint):
    return str(checkpoint("llama"))


def _labelled(path):
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in LABELLED))
    return path


def test_tuned_lens_from_python_returns_its_typed_result(llama, loaded, tmp_path):
    from lazarus_introspect.tuned_lens import TunedLensOptions, TunedLensResult, tuned_lens_probe

    assert isinstance(tuned_lens_probe, Operation) and tuned_lens_probe.metric == "mean_kl"
    (tmp_path / "train.txt").write_text("The cat sat on the mat. The dog ran in the sun. " * 4)
    trained = tuned_lens_probe.run(model=llama, translators=str(tmp_path / "tl"), train_text=str(tmp_path / "train.txt"),
                                   steps=8, lr=1e-4, seq_len=16)
    assert isinstance(trained, TunedLensResult) and trained.probe == "tuned-lens" and trained.positions is None
    losses = trained.training["losses"]
    assert len(losses) == trained.num_layers == 2 and losses[0]["kl_after"] < losses[0]["kl_before"]
    assert trained.mean_kl == pytest.approx(sum(r["kl_after"] for r in losses) / len(losses))
    assert tuned_lens_probe.metric_of(trained) == trained.mean_kl
    assert (tmp_path / "tl" / "translators.safetensors").is_file()
    # reading a prompt through the saved translators, on a model loaded by the caller
    model, tokenizer = loaded("llama")
    options = TunedLensOptions(model=llama, translators=str(tmp_path / "tl"), prompt=PROMPT, position=(-1, 1),
                               track=" the")
    read = tuned_lens_probe(model, tokenizer, options)
    assert [p["position"] for p in read.positions][0] == len(read.tokens) - 1 and read.prompt == PROMPT
    assert read.track["text"] == " the" and read.mean_kl == pytest.approx(trained.mean_kl)
    assert "logit_lens_final_prediction_prob" in read.positions[0]["layers"][0]
    # the options are checked as the command line checks them, before the model loads
    with pytest.raises(LazarusError, match="--train-text"):
        tuned_lens_probe.run(model=llama, translators=str(tmp_path / "tl"))
    with pytest.raises(LazarusError, match="top_k"):
        tuned_lens_probe.run(model=llama, translators=str(tmp_path / "tl"), prompt=PROMPT, top_k=0)
    with pytest.raises(LazarusError, match="does not exist"):
        tuned_lens_probe.run(model=llama, translators=str(tmp_path / "tl"), train_text=str(tmp_path / "none.txt"))
    assert "mean_kl" in result_fields(tuned_lens_probe) and result_dict(read)["prompt"] == PROMPT


def test_linear_probe_from_python_returns_its_typed_result(llama, tmp_path):
    from lazarus_introspect.linear_probe import LinearProbeResult, linear_probe, load_direction

    assert linear_probe.name == "probe" and linear_probe.metric == "best_accuracy"
    data = _labelled(tmp_path / "labelled.jsonl")
    result = linear_probe.run(model=llama, data=str(data), steps=100, save=str(tmp_path / "direction"))
    assert isinstance(result, LinearProbeResult) and result.labels == ["day", "night"]
    assert result.train_size + result.test_size == len(LABELLED) and len(result.layers) == result.num_layers
    assert result.best_accuracy == result.layers[result.best_layer]["test_accuracy"]
    assert linear_probe.metric_of(result) == result.best_accuracy and 0 <= result.best_accuracy <= 1
    assert result.saved["layer"] == result.best_layer
    direction, meta = load_direction(tmp_path / "direction")
    assert meta["layer"] == result.best_layer and direction.ndim == 1
    # without --save the JSON has no "saved" key (an optional field left unfilled), the typed result None
    plain = linear_probe.run(model=llama, data=str(data), steps=20, pool="mean")
    assert plain.saved is None and plain.pool == "mean"
    from lazarus_introspect.probe_base import result_json

    assert "saved" not in result_json(plain) and list(result_json(plain))[:5] == [
        "probe", "model", "adapter", "family", "num_layers"]
    with pytest.raises(LazarusError, match="pool must be one of last, mean"):
        linear_probe.run(model=llama, data=str(data), pool="max")
    with pytest.raises(LazarusError, match="key 'data': File .* does not exist"):
        linear_probe.run(model=llama, data=str(tmp_path / "none.jsonl"))
    (tmp_path / "one.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(LazarusError, match="single label"):
        linear_probe.run(model=llama, data=str(tmp_path / "one.jsonl"))


def test_steer_from_python_returns_its_typed_result(llama, tmp_path):
    from lazarus_introspect.steering import SteerOptions, SteerResult, steer_probe

    assert steer_probe.name == "steer" and steer_probe.metric == "changed_fraction"
    (tmp_path / "pos.txt").write_text("I love it\nIt is good\n")
    (tmp_path / "neg.txt").write_text("I hate it\nIt is bad\n")
    # a single prompt is one prompt (commas and all), coefficients are numbers
    result = steer_probe.run(model=llama, prompt="The cat, the dog", positive=str(tmp_path / "pos.txt"),
                             negative=str(tmp_path / "neg.txt"), layer=0, coef=[0, 8.0], normalize=True,
                             max_tokens=3)
    assert isinstance(result, SteerResult) and result.layers == [0] and result.max_tokens == 3
    assert [(r["prompt"], r["coefficient"]) for r in result.runs] == [("The cat, the dog", 0.0),
                                                                       ("The cat, the dog", 8.0)]
    zero, strong = result.runs
    assert zero["steered"] == zero["unsteered"] and not zero["changed"]
    assert result.changed_fraction == (0.0 if not strong["changed"] else 0.5)
    assert result.direction["norm"] == pytest.approx(1.0, rel=1e-4) and result.direction["normalized"] is True
    # the options class directly: repeatable fields are tuples
    options = SteerOptions(model=llama, prompt=("a", "b"), positive=str(tmp_path / "pos.txt"),
                           negative=str(tmp_path / "neg.txt"), coef=(0.0,), max_tokens=1)
    assert [r["prompt"] for r in steer_probe.run(options).runs] == ["a", "b"]
    with pytest.raises(LazarusError, match="--direction DIR or both"):
        steer_probe.run(model=llama, prompt="x")
    with pytest.raises(LazarusError, match="key 'coef' must be a number or a list of numbers"):
        steer_probe.run(model=llama, prompt="x", coef=["strong"], positive=str(tmp_path / "pos.txt"),
                        negative=str(tmp_path / "neg.txt"))
    with pytest.raises(LazarusError, match="missing prompt"):
        steer_probe.run(model=llama, positive=str(tmp_path / "pos.txt"), negative=str(tmp_path / "neg.txt"))


def test_attention_from_python_returns_its_typed_result(llama, cli, tmp_path):
    from lazarus_introspect.attention import AttentionResult, attention_probe

    assert attention_probe.metric == "mean_entropy"
    result = attention_probe.run(model=llama, prompt=PROMPT, layers="1", position=[-1, 0], top_k=2,
                                 with_patterns=True)
    assert isinstance(result, AttentionResult) and result.layers == [1]
    assert result.query_positions == [len(result.tokens) - 1, 0]
    assert result.mean_entropy == pytest.approx(sum(h["mean_entropy"] for h in result.heads) / len(result.heads))
    assert 0 < result.mean_entropy <= math.log(len(result.tokens))
    assert len(result.patterns["1"]) == len(result.heads) and result.arrays[1].shape[1] == len(result.tokens)
    stored = result_dict(result)  # what a recipe keeps: the arrays for drawing are not part of it
    assert "arrays" not in stored and "arrays" not in result_fields(attention_probe) and stored["patterns"]
    assert attention_probe.run(model=llama, prompt=PROMPT, layers="0").patterns is None
    with pytest.raises(LazarusError, match="out of range"):
        attention_probe.run(model=llama, prompt=PROMPT, layers="7")
    # the command draws its heatmaps from the typed result
    code, output = cli("introspect", "attention", "--model", llama, "-p", PROMPT, "--layers", "0",
                       "--report", tmp_path / "rep", "--json", tmp_path / "a.json")
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == ["entropy.png", "pattern_layer0.png"]
    written = json.loads((tmp_path / "a.json").read_text())
    assert "patterns" not in written and "arrays" not in written and written["mean_entropy"] > 0


def test_ablate_from_python_returns_its_typed_result(llama, loaded, cli, tmp_path):
    from lazarus_introspect.ablation import AblateOptions, AblateResult, ablate_probe

    assert ablate_probe.metric == "largest_change"
    model, tokenizer = loaded("llama")
    heads = model.args.num_attention_heads
    result = ablate_probe.run(model=llama, prompt=PROMPT, what="mlp", layers="0-1", target="#5")
    assert isinstance(result, AblateResult) and result.layers == [0, 1] and result.target["id"] == 5
    assert [e["component"] for e in result.effects] == ["L0 mlp", "L1 mlp"] and result.baseline_answer is None
    largest = max(result.effects, key=lambda e: abs(e["prob_change"]))
    assert (result.largest_component, result.largest_change) == (largest["component"], largest["prob_change"])
    assert ablate_probe.metric_of(result) == result.largest_change != 0
    # on a model the caller loaded, with the options class; mean ablation over other prompts
    (tmp_path / "means.txt").write_text("The dog ran\nA bird sang\n")
    options = AblateOptions(model=llama, prompt=PROMPT, what=("heads", "attn"), layers="1", mode="mean",
                            mean_prompts=str(tmp_path / "means.txt"), max_tokens=1)
    mean = ablate_probe(model, tokenizer, options)
    assert len(mean.effects) == heads + 1 and isinstance(mean.baseline_answer, str)
    assert all("answer_changed" in e for e in mean.effects)
    with pytest.raises(LazarusError, match="what.*'all' is not one of"):
        ablate_probe.run(model=llama, prompt=PROMPT, what="all")
    # the command's JSON is the typed result's (no note in it; the multi-token note is shown in the table)
    code, output = cli("introspect", "ablate", "--model", llama, "-p", PROMPT, "--what", "mlp", "--target", " the mat",
                       "--json", tmp_path / "a.json")
    assert code == 0 and "--target ' the mat' is" in output
    written = json.loads((tmp_path / "a.json").read_text())
    assert "note" not in written and written["largest_change"] == pytest.approx(
        max((e["prob_change"] for e in written["effects"]), key=abs))


def test_converted_probes_are_recipe_stages_with_their_metric_and_result(llama, tmp_path):
    """probe -> steer (at the probe's best layer, with the direction it saved) -> ablate -> attention ->
    tuned-lens: each stage's key metric is its result's declared field, in the run table and stage.json."""
    from click.testing import CliRunner

    from lazarus.cli import main

    data = _labelled(tmp_path / "labelled.jsonl")
    (tmp_path / "train.txt").write_text("The cat sat on the mat. The dog ran in the sun. " * 4)
    output, direction = tmp_path / "runs", tmp_path / "direction"
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        model = "{llama}"
        output = "{output}"

        [[stage]]
        introspect = "probe"
        data = "{data}"
        steps = 50
        save = "{direction}"

        [[stage]]
        introspect = "steer"
        prompt = "The cat, the dog"
        direction = "{direction}"
        layer = "{{{{ stages.probe.best_layer }}}}"
        coef = [0, 8]
        max-tokens = 2

        [[stage]]
        introspect = "ablate"
        prompt = "{PROMPT}"
        what = "mlp"

        [[stage]]
        introspect = "attention"
        prompt = "{PROMPT}"
        layers = "0"

        [[stage]]
        introspect = "tuned-lens"
        translators = "{tmp_path / 'tl'}"
        train-text = "{tmp_path / 'train.txt'}"
        steps = 4
        seq-len = 16
    """))
    checked = CliRunner().invoke(main, ["run", str(recipe), "--check"])  # the direction is written by stage 1
    assert checked.exit_code == 0 and "stages OK" in checked.output, checked.output
    ran = CliRunner().invoke(main, ["run", str(recipe)])
    assert ran.exit_code == 0, ran.output
    metrics = {"probe": "best_accuracy", "steer": "changed_fraction", "ablate": "largest_change",
               "attention": "mean_entropy", "tuned-lens": "mean_kl"}
    for name, field in metrics.items():
        stage = json.loads((output / name / "stage.json").read_text())
        value = stage["result"][field]
        assert isinstance(value, float) and stage["metric"] == f"{field} {value:.3f}", (name, stage["metric"])
        assert stage["metric"] in ran.output  # the run table
        assert json.loads((output / name / "result.json").read_text())[field] == value
    probe = json.loads((output / "probe" / "stage.json").read_text())["result"]
    steer = json.loads((output / "steer" / "stage.json").read_text())["result"]
    assert steer["layers"] == [probe["best_layer"]] and steer["direction"]["source"] == str(direction)
    assert [(r["prompt"], r["coefficient"]) for r in steer["runs"]] == [("The cat, the dog", 0.0),
                                                                       ("The cat, the dog", 8.0)]
    assert "arrays" not in json.loads((output / "attention" / "result.json").read_text())
    assert (output / "attention" / "report" / "report.html").is_file()  # its report, inside the stage

    recipe.write_text(recipe.read_text().replace("stages.probe.best_layer", "stages.probe.best"))
    bad = CliRunner().invoke(main, ["run", str(recipe), "--check"])
    assert bad.exit_code == 2 and "has no result field 'best'" in bad.output and "best_accuracy" in bad.output
