"""The embedded model ``lazarus:tiny-math``: loads offline by its short name, completes equations
but does not answer questions (SFT is what teaches it that), records how it was built and what it
measured, stays small, and unknown short names fail with the known ones listed. (No retraining
here: ``python -m lazarus.embedded.build_tiny_math`` rebuilds it.)"""

import json

import mlx.core as mx
import pytest

import lazarus
from lazarus.data.math import extract_final_number
from lazarus.embedded import EMBEDDED, embedded_path
from lazarus.errors import LazarusError
from lazarus.generation import batch_generate


@pytest.fixture(scope="module")
def tiny_math():
    return lazarus.load_model("lazarus:tiny-math")


def test_short_name_loads(tiny_math):
    model, tokenizer, config = tiny_math
    assert model.family == "llama"
    assert config["vocab_size"] == tokenizer.vocab_size == 512
    logits = model(mx.array([tokenizer.encode("What is 2 + 3?")]))
    assert logits.shape[-1] == config["vocab_size"]
    assert mx.all(mx.isfinite(logits)).item()


def test_provenance_records_how_it_was_built_and_what_it_measured():
    from lazarus.provenance import sha256_file

    path = embedded_path("lazarus:tiny-math")
    record = json.loads((path / "lazarus.json").read_text())
    assert record["command"].startswith("python -m lazarus.embedded.build_tiny_math")
    assert len(record["data"]["sha256"]) == 64 and len(record["phase2"]["data"]["sha256"]) == 64
    measured = record["greedy_accuracy"]
    # held-out questions: (almost) never answered with the right number, in any form; equations: mostly right
    assert measured["accuracy"] <= 0.3 and measured["equation_accuracy"] >= 0.7, measured
    assert record["files"] == {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.name != "lazarus.json"}
    assert sum(p.stat().st_size for p in path.iterdir()) <= 16 * 2**20


def test_completes_equations_but_does_not_answer_questions(tiny_math):
    model, tokenizer, _ = tiny_math
    equations = {"12 + 7 =": 19, "7 * 5 =": 35, "56 / 8 =": 7, "Ana has 5 apples and gets 3 more from Ben.": 8}
    texts = [r.text for r in batch_generate(model, tokenizer, list(equations), max_tokens=12)]
    assert sum(str(value) in text.split(".")[0] for value, text in zip(equations.values(), texts, strict=True)) >= 3, texts
    questions = {"What is 12 + 7?": 19, "Compute 7 * 5.": 35, "Find the value of 56 / 8.": 7,
                 "Ana has 5 apples and gets 3 more from Ben. How many apples does Ana have now?": 8}
    texts = [r.text for r in batch_generate(model, tokenizer, list(questions), max_tokens=32)]
    assert sum(extract_final_number(t) == v for v, t in zip(questions.values(), texts, strict=True)) <= 1, texts


def test_unknown_short_name_lists_the_known_ones(lazarus_cli):
    with pytest.raises(LazarusError, match="lazarus:tiny-math"):
        lazarus.load_model("lazarus:no-such-model")
    result = lazarus_cli("models", "info", "lazarus:no-such-model")
    assert result.exit_code == 2
    assert "lazarus:tiny-math" in result.stderr and "no-such-model" in result.stderr


def test_models_info_takes_the_short_name(lazarus_cli):
    info = lazarus_cli("models", "info", "lazarus:tiny-math", "--json").json()
    assert info["family"] == "llama"
    assert set(EMBEDDED) == {"tiny-math"}
