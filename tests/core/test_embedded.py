"""The embedded model ``lazarus:tiny-math``: loads offline by its short name, answers in the math
generator's format, and unknown short names fail with the known ones listed. (No retraining here:
``python -m lazarus.embedded.build_tiny_math`` rebuilds it.)"""

import json

import mlx.core as mx
import pytest

import lazarus
from lazarus.data.math import extract_answer
from lazarus.embedded import EMBEDDED, embedded_path
from lazarus.errors import LazarusError
from lazarus.generate import batch_generate


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


def test_provenance_records_how_it_was_built():
    record = json.loads((embedded_path("lazarus:tiny-math") / "lazarus.json").read_text())
    assert record["command"].startswith("python -m lazarus.embedded.build_tiny_math")
    assert len(record["data"]["sha256"]) == 64
    assert 0 < record["greedy_accuracy"]["accuracy"] < 1


def test_greedy_answers_in_the_generator_format(tiny_math):
    model, tokenizer, _ = tiny_math
    prompts = ["What is 12 + 7?", "Ana has 5 apples and gets 3 more from Ben. How many apples does Ana have now?"]
    texts = [r.text for r in batch_generate(model, tokenizer, prompts, max_tokens=32)]
    # the model may be wrong, but it writes an equation and (mostly) the answer sentence
    assert all(" = " in text for text in texts), texts
    assert any(isinstance(extract_answer(text), int) for text in texts), texts


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
