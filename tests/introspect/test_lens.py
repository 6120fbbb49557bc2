"""Logit lens and tuned lens against hand computations on a real tiny checkpoint."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lazarus_introspect import activations
from lazarus_introspect.logit_lens import layer_logits, logit_lens
from lazarus_introspect.tuned_lens import (
    load_translators,
    save_translators,
    text_windows,
    train_translators,
    translator_kl,
    translator_transform,
)
from tests.conftest import FAMILIES


def _ids(tokenizer, text="The cat sat on the mat and looked"):
    return mx.array([tokenizer.encode(text)], dtype=mx.int32)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_last_layer_of_the_lens_is_the_models_own_logits(loaded, family):
    model, tokenizer = loaded(family)
    ids = _ids(tokenizer)
    per_layer, logits = layer_logits(model, ids)
    np.testing.assert_allclose(np.array(per_layer[-1]), np.array(model(ids)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(logits), np.array(model(ids)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_is_head_of_final_norm_of_its_own_residual(loaded, family):
    """By hand from the checkpoint's tensors: RMSNorm (StarCoder2: LayerNorm) with each layer's own scale (Gemma's 1 + w),
    then the head (tied or not), Granite's logits divisor and Gemma-2's final soft cap."""
    model, tokenizer = loaded(family)
    args = model.args
    ids = _ids(tokenizer)
    per_layer, _ = layer_logits(model, ids)
    count = activations.num_layers(model)
    _, cache = model.run_with_cache(ids, names=[f"blocks.{i}.hook_resid_post" for i in range(count)])
    norm_weight = np.array(model.model.norm.weight, dtype=np.float64) + args.norm_offset
    head = np.array(model.model.embed_tokens.weight if args.tie_word_embeddings else model.lm_head.weight,
                    dtype=np.float64)
    for layer in range(count):
        h = np.array(cache[f"blocks.{layer}.hook_resid_post"], dtype=np.float64)
        if "bias" in model.model.norm:  # StarCoder2's LayerNorm: centred, with a bias
            centred = h - h.mean(axis=-1, keepdims=True)
            normed = (centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + args.norm_eps)
                      * norm_weight + np.array(model.model.norm.bias, dtype=np.float64))
        else:
            normed = h / np.sqrt((h ** 2).mean(axis=-1, keepdims=True) + args.rms_norm_eps) * norm_weight
        logits = normed @ head.T
        if args.logits_divisor is not None:
            logits = logits / args.logits_divisor
        if args.final_softcap is not None:
            logits = np.tanh(logits / args.final_softcap) * args.final_softcap
        np.testing.assert_allclose(np.array(per_layer[layer]), logits, rtol=1e-4, atol=1e-4)
    # the layers really differ: normalisation is per layer, not the final layer's cached scale
    assert not np.allclose(np.array(per_layer[0]), np.array(per_layer[-1]), atol=1e-3)


def test_logit_lens_result_tracks_tokens_and_emergence(loaded):
    model, tokenizer = loaded("llama")
    result = logit_lens(model, tokenizer, "The cat sat on the", positions=(-1, 1), top_k=3, track=" the")
    assert [e["position"] for e in result["positions"]] == [len(result["tokens"]) - 1, 1]
    logits = np.array(model(_ids(tokenizer, "The cat sat on the")))[0]
    for entry in result["positions"]:
        final = int(np.argmax(logits[entry["position"]]))
        assert entry["final_prediction"]["id"] == final
        last = entry["layers"][-1]
        assert last["top"][0]["id"] == final and last["final_prediction_rank"] == 1
        probs = [t["prob"] for t in last["top"]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 3
        # emergence: top-1 equals the final prediction from that layer on, and not just before it
        emerged = entry["emergence_layer"]
        assert all(layer["top"][0]["id"] == final for layer in entry["layers"][emerged:])
        if emerged > 0:
            assert entry["layers"][emerged - 1]["top"][0]["id"] != final
        assert all(1 <= layer["track_rank"] <= model.args.vocab_size for layer in entry["layers"])


@pytest.mark.slow
def test_tuned_lens_trains_lowers_kl_and_round_trips(loaded, tmp_path):
    model, tokenizer = loaded("llama")
    text = "The cat sat on the mat. The dog ran to the park and the bird sang in the tree. " * 6
    trained = train_translators(model, tokenizer, text, steps=40, learning_rate=3e-3, seq_len=32)
    losses = trained["losses"]
    assert losses[0]["kl_after"] < 0.8 * losses[0]["kl_before"]
    assert losses[-1]["kl_before"] == pytest.approx(0.0, abs=1e-5)  # the last layer is already the output
    # it generalises: on text it never saw, layer 0 read through its translator is closer to the output
    held_out = text_windows(tokenizer, "A bird sat in the tree and the man ran to the sea.", seq_len=32)
    plain_kl = translator_kl(model, held_out)
    tuned_kl = translator_kl(model, held_out, trained["weights"], trained["bias"])
    assert tuned_kl[0] < plain_kl[0]
    save_translators(tmp_path / "tl", trained, {"num_layers": len(losses)})
    weights, biases, _ = load_translators(tmp_path / "tl", model)
    for a, b in zip(weights, trained["weights"], strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # zero translators are the plain logit lens
    ids = _ids(tokenizer)
    zeros = [mx.zeros_like(w) for w in weights]
    tuned, _ = layer_logits(model, ids, translator_transform(zeros, [mx.zeros_like(b) for b in biases]))
    plain, _ = layer_logits(model, ids)
    np.testing.assert_allclose(np.array(tuned), np.array(plain), rtol=1e-5, atol=1e-5)


def test_translators_of_another_model_are_refused(loaded, tmp_path):
    from lazarus.errors import LazarusError

    model, _ = loaded("llama")
    trained = {"weights": [mx.zeros((8, 8))] * 2, "bias": [mx.zeros((8,))] * 2}
    save_translators(tmp_path / "bad", trained, {"num_layers": 2})
    with pytest.raises(LazarusError, match="shape"):
        load_translators(tmp_path / "bad", model)
