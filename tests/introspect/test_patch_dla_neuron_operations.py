"""patch, attribute, dla, neurons and embeddings are operations (lazarus.operations): each runs
from Python (``op.run(...)`` or on a loaded model) and returns a typed result whose declared metric
field is its key figure; as recipe stages their metric reaches stage.json and the run table, and
later stages refer to their result fields."""

from __future__ import annotations

import json
import textwrap

import pytest

from lazarus.errors import LazarusError
from lazarus.operations import Operation, result_fields

PROMPT = "The cat sat on the mat"
CLEAN, CORRUPTED = "The cat sat on the mat", "The hat sat on the mat"
LABELLED = [("The sun is up and it is day", "day"), ("We sat in the sun", "day"), ("It is day", "day"),
            ("The moon is up and it is night", "night"), ("It was dark in the night", "night"),
            ("The night was cold", "night")]


@pytest.fixture
def llama(checkpoint):
    return str(checkpoint("llama"))


def _changed_position(result) -> int:
    changed = [i for i, (a, b) in enumerate(zip(result.clean_tokens, result.corrupted_tokens, strict=True)) if a != b]
    assert len(changed) == 1
    return changed[0]


def test_patch_from_python_returns_its_typed_result(llama, loaded):
    from lazarus_introspect.patching import PatchOptions, PatchResult, activation_patching

    assert isinstance(activation_patching, Operation) and activation_patching.metric == "max_score"
    result = activation_patching.run(model=llama, clean=CLEAN, corrupted=CORRUPTED, answer="#10", wrong="#11")
    assert isinstance(result, PatchResult) and result.probe == "patch" and result.num_layers == 2
    assert set(result.scores) == {"resid", "attn_out", "mlp_out"} and result.layers == [0, 1]
    changed = _changed_position(result)
    # layer 0's residual at the changed token is all that differs: patching it restores the clean run
    assert result.scores["resid"][0][changed] == pytest.approx(1.0, abs=1e-3)
    assert result.max_score == max(v for grid in result.scores.values() for row in grid for v in row)
    assert activation_patching.metric_of(result) == result.max_score >= 1.0 - 1e-3
    assert result.answer["ids"] == [10] and result.wrong["token"] == result.wrong["tokens"][0]
    assert "max_score" in result_fields(activation_patching)
    # on a model the caller loaded, one component
    model, tokenizer = loaded("llama")
    one = activation_patching(model, tokenizer, PatchOptions(model=llama, clean=CLEAN, corrupted=CORRUPTED,
                                                             answer="#10", wrong="#11", component=("resid",)))
    assert set(one.scores) == {"resid"} and one.scores["resid"] == result.scores["resid"]
    with pytest.raises(LazarusError, match="same tokens"):
        activation_patching(model, tokenizer, PatchOptions(model=llama, clean=CLEAN, corrupted=CORRUPTED,
                                                           answer="#10", wrong="#10"))
    with pytest.raises(LazarusError, match="--component 'mlp'"):
        activation_patching(model, tokenizer, PatchOptions(model=llama, clean=CLEAN, corrupted=CORRUPTED,
                                                           answer="#10", wrong="#11", component=("mlp",)))
    with pytest.raises(LazarusError, match="missing clean"):
        activation_patching.run(model=llama, corrupted=CORRUPTED, answer="#10", wrong="#11")


def test_attribute_from_python_returns_its_typed_result(llama, loaded):
    from lazarus_introspect.attribution import AttributeOptions, AttributeResult, attribution_probe
    from lazarus_introspect.probe_base import result_json

    assert attribution_probe.metric == "max_score"
    compared = attribution_probe.run(model=llama, clean=CLEAN, corrupted=CORRUPTED, answer="#7", wrong="#9",
                                     compare=True)
    assert isinstance(compared, AttributeResult) and compared.components == ["resid_pre", "attn_out", "mlp_out"]
    assert compared.correlation is not None and set(compared.patching_scores) == set(compared.components)
    assert compared.max_score == max(v for grid in compared.scores.values() for row in grid for v in row)
    assert attribution_probe.metric_of(compared) == compared.max_score
    # before the changed token the two runs are the same (causal attention): nothing to attribute there
    changed = _changed_position(compared)
    assert all(row[:changed] == [0.0] * changed for grid in compared.scores.values() for row in grid)
    assert compared.scores["resid_pre"][0][changed] != 0.0
    model, tokenizer = loaded("llama")
    plain = attribution_probe(model, tokenizer, AttributeOptions(model=llama, clean=CLEAN, corrupted=CORRUPTED,
                                                                 answer="#7", wrong="#9", layers="1",
                                                                 component=("mlp_out",)))
    assert plain.layers == [1] and list(plain.scores) == ["mlp_out"] and plain.patching_scores is None
    assert plain.scores["mlp_out"] == [compared.scores["mlp_out"][1]]
    written = result_json(plain)  # without --compare the JSON has no comparison keys, as before
    assert "correlation" not in written and "patching_scores" not in written and written["max_score"] == plain.max_score
    with pytest.raises(LazarusError, match="same length"):
        attribution_probe(model, tokenizer, AttributeOptions(model=llama, clean=CLEAN, corrupted="The cat",
                                                             answer="#7", wrong="#9"))


def test_dla_from_python_returns_its_typed_result(llama, loaded):
    from lazarus_introspect.dla import DlaOptions, DlaResult, dla_probe

    assert dla_probe.metric == "logit"
    result = dla_probe.run(model=llama, prompt=PROMPT, baseline="#5")
    assert isinstance(result, DlaResult) and result.baseline["id"] == 5 and result.position == len(result.tokens) - 1
    parts = result.total + sum(result.remainder.values())
    assert parts == pytest.approx(result.logit, abs=1e-4) and dla_probe.metric_of(result) == result.logit
    assert len(result.heads) == 2 and {c["kind"] for c in result.components} == {"embed", "attn", "mlp", "head"}
    model, tokenizer = loaded("llama")
    coarse = dla_probe(model, tokenizer, DlaOptions(model=llama, prompt=PROMPT, target="#5", position=1, heads=False))
    assert coarse.heads is None and coarse.target["id"] == 5 and coarse.position == 1
    with pytest.raises(LazarusError, match="target token itself"):
        dla_probe(model, tokenizer, DlaOptions(model=llama, prompt=PROMPT, target="#5", baseline="#5"))
    with pytest.raises(LazarusError, match="key .show.: 0 is not in the range"):
        dla_probe.run(model=llama, prompt=PROMPT, show=0)


def test_neurons_from_python_returns_its_typed_result(llama, loaded, tmp_path):
    from lazarus_introspect.neurons import NeuronsOptions, NeuronsResult, neurons_probe
    from lazarus_introspect.probe_base import result_json

    assert neurons_probe.metric == "max_activation"
    (tmp_path / "more.txt").write_text("The sun is up\n\nIt is day\n")
    result = neurons_probe.run(model=llama, prompt=(PROMPT,), prompts=str(tmp_path / "more.txt"), top_k=3,
                               promote_k=2)
    assert isinstance(result, NeuronsResult) and result.prompts == [PROMPT, "The sun is up", "It is day"]
    assert [entry["layer"] for entry in result.layers] == [0, 1]
    for entry in result.layers:
        peaks = [n["max_activation"] for n in entry["neurons"]]
        assert len(peaks) == 3 and peaks == sorted(peaks, reverse=True)
        assert all(len(n["promotes"]) == len(n["suppresses"]) == 2 for n in entry["neurons"])
    assert result.max_activation == max(entry["neurons"][0]["max_activation"] for entry in result.layers)
    assert neurons_probe.metric_of(result) == result.max_activation
    # every neuron's peak travels with the result for the figure, but is not in its JSON
    assert [len(p) for p in result.peak_activations] == [e["num_neurons"] for e in result.layers]
    assert "peak_activations" not in result_json(result) and "peak_activations" not in result_fields(neurons_probe)
    model, tokenizer = loaded("llama")
    last = neurons_probe(model, tokenizer, NeuronsOptions(model=llama, prompt=(PROMPT,), layers="-1", top_k=1))
    assert [entry["layer"] for entry in last.layers] == [1] and len(last.layers[0]["neurons"]) == 1
    with pytest.raises(LazarusError, match="give prompts"):
        neurons_probe.run(model=llama)
    with pytest.raises(LazarusError, match="out of range"):
        neurons_probe(model, tokenizer, NeuronsOptions(model=llama, prompt=(PROMPT,), layers="5"))


def test_embeddings_from_python_returns_its_typed_result(llama, loaded, tmp_path):
    from lazarus_introspect.embeddings import EmbeddingsOptions, EmbeddingsResult, embeddings_probe

    assert embeddings_probe.metric == "best_silhouette"
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in LABELLED))
    result = embeddings_probe.run(model=llama, data=str(data), pool="mean")
    assert isinstance(result, EmbeddingsResult) and result.labels == [label for _, label in LABELLED]
    assert [row["layer"] for row in result.layers] == ["embed", 0, 1] and result.pool == "mean"
    assert result.similarity_layer == 1 and len(result.cosine) == len(LABELLED)
    assert all(result.cosine[i][i] == pytest.approx(1.0, abs=1e-4) for i in range(len(LABELLED)))
    assert result.best_silhouette == max(row["silhouette"] for row in result.layers)
    assert -1 <= embeddings_probe.metric_of(result) <= 1
    assert all(isinstance(row["pca"], list) and len(row["pca"]) == len(LABELLED) for row in result.layers)
    model, tokenizer = loaded("llama")
    unlabelled = embeddings_probe(model, tokenizer, EmbeddingsOptions(model=llama, prompt=(PROMPT, "The sun"), layer=0))
    assert unlabelled.best_silhouette is None and unlabelled.similarity_layer == 0 and unlabelled.labels == ["-", "-"]
    with pytest.raises(LazarusError, match="at least two"):
        embeddings_probe.run(model=llama, prompt=(PROMPT,))
    with pytest.raises(LazarusError, match="pool must be one of last, mean"):
        embeddings_probe.run(model=llama, data=str(data), pool="max")


def test_patch_and_dla_are_recipe_stages_with_their_metric(llama, cli, tmp_path):
    output = tmp_path / "runs"
    recipe = tmp_path / "probes.toml"
    recipe.write_text(textwrap.dedent(f"""
        model = "{llama}"
        output = "{output}"

        [[stage]]
        introspect = "patch"
        clean = "{CLEAN}"
        corrupted = "{CORRUPTED}"
        answer = "#10"
        wrong = "#11"
        component = "resid"

        [[stage]]
        introspect = "dla"
        prompt = "{PROMPT}"
        show = "{{{{ stages.patch.num_layers }}}}"

        [[stage]]
        introspect = "neurons"
        prompt = ["{PROMPT}", "The sun is up"]
        top-k = 2
    """))
    code, printed = cli("run", recipe)
    assert code == 0, printed
    patch = json.loads((output / "patch" / "stage.json").read_text())
    assert patch["metric"] == f"max_score {patch['result']['max_score']:.3f}"
    assert patch["metric"] in printed and list(patch["result"]["scores"]) == ["resid"]
    assert json.loads((output / "patch" / "result.json").read_text())["max_score"] == patch["result"]["max_score"]
    assert (output / "patch" / "report" / "report.html").is_file()
    dla = json.loads((output / "dla" / "stage.json").read_text())
    assert dla["metric"] == f"logit {dla['result']['logit']:.3f}" and dla["metric"] in printed
    assert "largest contributions" in printed  # dla's table, --show 2 from the patch stage's num_layers
    neurons = json.loads((output / "neurons" / "stage.json").read_text())
    assert neurons["metric"] == f"max_activation {neurons['result']['max_activation']:.3f}"
    assert "peak_activations" not in neurons["result"] and len(neurons["result"]["layers"][0]["neurons"]) == 2
    recipe.write_text(recipe.read_text().replace("stages.patch.num_layers", "stages.patch.best"))
    code, printed = cli("run", recipe, "--check")
    assert code == 2 and "has no result field 'best'" in printed and "max_score" in printed
