"""--track, --answer and --wrong that are several tokens: the whole continuation counts (its
log-probabilities summed, as TransformerLens users expect), the first token gives the rank, and
the tokenisation is shown. On a byte-level tokenizer " B" and " C" are two tokens each and share
the first (" "), which used to make them "the same token"."""

from __future__ import annotations

import numpy as np
import pytest

CLEAN, CORRUPTED = "The cat sat on the mat", "The hat sat on the mat"


def _continuation_logprob(model, tokenizer, prompt: str, text: str) -> float:
    """log p(text | prompt) from the model's own logits, summed over text's tokens."""
    import mlx.core as mx

    prompt_ids = tokenizer.encode(prompt)
    target = tokenizer.encode(text, add_special_tokens=False)
    logits = np.array(model(mx.array([prompt_ids + target[:-1]])).astype(mx.float32))[0]
    logits = logits[len(prompt_ids) - 1:]
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return float(sum(logprobs[i, t] for i, t in enumerate(target)))


@pytest.fixture
def two_token_answers(loaded):
    _, tokenizer = loaded("llama")
    answer, wrong = " B", " C"
    a, b = tokenizer.encode(answer, add_special_tokens=False), tokenizer.encode(wrong, add_special_tokens=False)
    assert len(a) == len(b) == 2 and a[0] == b[0] and a != b  # the case the issue met
    return answer, wrong


def test_patch_with_multi_token_answers_uses_the_whole_answers(cli, checkpoint, loaded, two_token_answers):
    model, tokenizer = loaded("llama")
    answer, wrong = two_token_answers
    code, output = cli("introspect", "patch", "--model", checkpoint("llama"), "--clean", CLEAN,
                       "--corrupted", CORRUPTED, "--answer", answer, "--wrong", wrong)
    assert code == 0, output
    assert "--answer ' B' = [' ', 'B'], --wrong ' C' = [' ', 'C']" in " ".join(output.split())
    result = cli.json("introspect", "patch", "--model", checkpoint("llama"), "--clean", CLEAN,
                      "--corrupted", CORRUPTED, "--answer", answer, "--wrong", wrong)
    assert result["answer"]["tokens"] == [" ", "B"] and result["wrong"]["tokens"] == [" ", "C"]
    expected = (_continuation_logprob(model, tokenizer, CLEAN, answer)
                - _continuation_logprob(model, tokenizer, CLEAN, wrong))
    assert result["clean_logit_diff"] == pytest.approx(expected, abs=1e-3)
    resid = np.array(result["scores"]["resid"])
    changed = 1 + [a != b for a, b in zip(CLEAN.split(), CORRUPTED.split(), strict=True)].index(True)
    assert resid[0, changed] == pytest.approx(1.0, abs=1e-3)  # layer 0 at the changed token restores it all
    assert np.abs(resid[:, :changed]).max() < 1e-3  # earlier positions never differ


def test_logit_lens_tracks_a_multi_token_string(cli, checkpoint, loaded, two_token_answers):
    model, tokenizer = loaded("llama")
    track = two_token_answers[0]
    code, output = cli("introspect", "logit-lens", "--model", checkpoint("llama"), "--prompt", CLEAN,
                       "--track", track)
    assert code == 0, output
    assert "--track ' B' is 2 tokens [' ', 'B']" in " ".join(output.split())
    result = cli.json("introspect", "logit-lens", "--model", checkpoint("llama"), "--prompt", CLEAN,
                      "--track", track)
    assert result["track"]["tokens"] == [" ", "B"]
    last = result["positions"][-1]["layers"]
    # the last layer's lens is the model's own output: the sum over both tokens matches it
    assert last[-1]["track_logprob"] == pytest.approx(_continuation_logprob(model, tokenizer, CLEAN, track), abs=1e-3)
    for layer in last:
        assert layer["track_logprob"] <= np.log(layer["track_prob"]) + 1e-4  # two tokens are no likelier than one
        assert layer["track_rank"] >= 1


def test_a_one_token_track_keeps_its_probability(cli, checkpoint):
    result = cli.json("introspect", "logit-lens", "--model", checkpoint("llama"), "--prompt", CLEAN, "--track", "#10")
    for layer in result["positions"][-1]["layers"]:
        assert layer["track_logprob"] == pytest.approx(np.log(layer["track_prob"]), abs=1e-4)
