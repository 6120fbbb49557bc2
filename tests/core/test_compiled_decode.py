"""The compiled decode step: the same tokens and logits as the uncompiled path, hooks fall back to it,
batched rows that finish leave without changing anyone's tokens, and new weights are seen."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from lazarus.generation import SamplingConfig, batch_generate, generate, generate_tokens

PROMPTS = ["What is 12 + 7?", "The cat", "Hello! How are you today? I am fine, thank you. " * 2,
           "1 2 3", "a b", "Once upon a time", "x", "Why is the sky blue? Because"]


def _tokens(model, ids, compiled, n=20, sampling=None, mask=None):
    steps = generate_tokens(model, mx.array(ids), sampling=sampling, max_tokens=n, mask=mask, compiled=compiled)
    return [t.tolist() for t in steps]


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    from lazarus.loader import load_model

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(tiny_checkpoint(family))[:2]
        return cache[family]

    return get


# mistral's tiny config has an 8-token sliding window, gemma2 alternates windows and soft-caps,
# qwen3 norms queries and keys
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen3"])
def test_greedy_tokens_identical(models, family):
    model, tok = models(family)
    prompt = [tok.encode(PROMPTS[2])]
    assert _tokens(model, prompt, True) == _tokens(model, prompt, False)
    # a left-padded batch: the padding mask travels into the static cache
    rows = [tok.encode(p) for p in PROMPTS[:3]]
    longest = max(map(len, rows))
    padded = [[r[0]] * (longest - len(r)) + r for r in rows]
    mask = mx.array([[0] * (longest - len(r)) + [1] * len(r) for r in rows], dtype=mx.bool_)
    assert _tokens(model, padded, True, mask=mask) == _tokens(model, padded, False, mask=mask)


def test_static_cache_logits_match_growing_cache(models):
    from lazarus.models.cache import StaticKVCache

    model, tok = models("mistral")
    prompt = mx.array([tok.encode(PROMPTS[2])])
    growing = model.make_cache()
    model(prompt, cache=growing)
    static = [StaticKVCache.from_cache(c, prompt.shape[1] + 16) for c in growing]
    for token in [5, 17, 3, 99, 42, 8, 11, 250, 7, 1]:
        ids = mx.array([[token]])
        expected = model(ids, cache=growing)
        np.testing.assert_allclose(np.array(model(ids, cache=static)), np.array(expected), atol=1e-5)


def test_seeded_and_penalised_sampling_identical(models):
    model, tok = models("llama")
    prompt = [tok.encode(PROMPTS[0])]
    for sampling in (SamplingConfig(temperature=0.9, seed=3),
                     SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, seed=1, repetition_penalty=1.3)):
        assert _tokens(model, prompt, True, sampling=sampling) == _tokens(model, prompt, False, sampling=sampling)
    # mlx's global generator (no seed): the same draws after the same mx.random.seed
    unseeded = SamplingConfig(temperature=1.0)
    mx.random.seed(5)
    compiled = _tokens(model, prompt, True, sampling=unseeded)
    mx.random.seed(5)
    assert compiled == _tokens(model, prompt, False, sampling=unseeded)


def test_hooks_apply_during_decode(models):
    """A hook attached around generation changes every step, as on the uncompiled path."""
    model, tok = models("llama")
    calls = []

    def flip(x, name):
        calls.append(name)
        return -x

    plain = generate(model, tok, PROMPTS[0], max_tokens=12, stop_token_ids=[])
    with model.hooks([("blocks.0.hook_mlp_out", flip)]):
        hooked = generate(model, tok, PROMPTS[0], max_tokens=12, stop_token_ids=[])
        expected = _tokens(model, [tok.encode(PROMPTS[0])], False, n=12)
    assert len(calls) >= 12  # prefill plus one call per decoded token
    assert hooked.token_ids == [t[0] for t in expected]
    assert hooked.token_ids != plain.token_ids
    # and with the hook gone the compiled path gives the plain tokens again
    assert generate(model, tok, PROMPTS[0], max_tokens=12, stop_token_ids=[]).token_ids == plain.token_ids


@pytest.mark.parametrize("options", [{}, {"repetition_penalty": 1.4, "repetition_context_size": 8}])
def test_batched_rows_leaving_equals_one_by_one(models, options):
    model, tok = models("llama")
    free = batch_generate(model, tok, PROMPTS, max_tokens=24, **options)
    counts = {}
    for result in free:
        for token in result.token_ids[:12]:
            counts[token] = counts.get(token, 0) + 1
    # stop on a few common tokens so that rows finish at different steps (8 rows shrink to 4, 2, 1)
    stops = sorted(counts, key=counts.get)[-3:]
    batch = batch_generate(model, tok, PROMPTS, max_tokens=24, stop_token_ids=stops, **options)
    singles = [generate(model, tok, p, max_tokens=24, stop_token_ids=stops, **options) for p in PROMPTS]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    lengths = {len(r.token_ids) for r in batch}
    assert len(lengths) > 2  # rows really left at different steps


def test_new_weights_are_seen(models, tiny_checkpoint):
    """Changing the weights between calls (as a trainer does between rollouts) changes the tokens."""
    from lazarus.loader import load_model

    model, tok = load_model(tiny_checkpoint("llama"))[:2]
    prompt = [tok.encode(PROMPTS[1])]
    before = _tokens(model, prompt, True)
    head = model.model.embed_tokens.weight if model.args.tie_word_embeddings else model.lm_head.weight
    noise = mx.random.normal(head.shape, key=mx.random.key(0)).astype(head.dtype)
    if model.args.tie_word_embeddings:
        model.model.embed_tokens.weight = head + noise
    else:
        model.lm_head.weight = head + noise
    after = _tokens(model, prompt, True)
    assert after == _tokens(model, prompt, False)
    assert after != before
