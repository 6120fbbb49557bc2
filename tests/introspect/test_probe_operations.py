"""Probes written as operations (lazarus.operations): each one runs from Python (``op.run(...)``)
and returns a typed result whose declared metric field is its key figure; the same probes are
recipe stages whose metric reaches the run table and stage.json, and whose result fields later
stages refer to."""

from __future__ import annotations

import json

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
