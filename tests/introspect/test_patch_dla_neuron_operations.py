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
    recipe.write_text(recipe.read_text().replace("stages.patch.num_layers", "stages.patch.best"))
    code, printed = cli("run", recipe, "--check")
    assert code == 2 and "has no result field 'best'" in printed and "max_score" in printed
