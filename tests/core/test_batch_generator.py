"""BatchGenerator: rows that join and leave a running batch get the tokens they get alone."""

from __future__ import annotations

import mlx.core as mx
import pytest

from lazarus.batch_generator import BatchGenerator
from lazarus.errors import LazarusError
from lazarus.generation import SamplingConfig, generate
from lazarus.loader import load_model

PROMPTS = [
    "hello there",
    "What is 3 + 4? The answer is a long sentence that goes on",
    "a",
    "The quick brown fox jumps over the lazy dog and then some more words follow here",
]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    model, tokenizer, _ = load_model(tiny_checkpoint("llama"))
    return model, tokenizer


def run(generator, schedule, until_empty=True):
    """``schedule``: {step number: [(key, prompt, add options)]}; returns {key: [tokens]}."""
    tokens, keys, step = {}, {}, 0
    while step <= max(schedule) or (until_empty and len(generator)):
        for key, prompt, options in schedule.get(step, []):
            keys[generator.add(prompt, **options)] = key
        for out in generator.step():
            tokens.setdefault(keys[out.row], []).append(out.token)
        step += 1
    return tokens


def test_rows_joining_a_running_batch_get_their_own_greedy_tokens(loaded):
    model, tokenizer = loaded
    alone = [generate(model, tokenizer, p, max_tokens=12).token_ids for p in PROMPTS]
    # the second and fourth prompts are longer than what is cached when they join: the running
    # rows are moved and their keys rotated
    schedule = {0: [(0, PROMPTS[0], {"max_tokens": 12})],
                3: [(1, PROMPTS[1], {"max_tokens": 12}), (2, PROMPTS[2], {"max_tokens": 12})],
                5: [(3, PROMPTS[3], {"max_tokens": 12})]}
    got = run(BatchGenerator(model, tokenizer), schedule)
    assert [got[i] for i in range(4)] == alone


def test_front_slots_are_dropped_when_long_rows_leave(loaded):
    model, tokenizer = loaded
    long_prompt = " ".join(["word"] * 120)
    short_alone = generate(model, tokenizer, PROMPTS[0], max_tokens=40).token_ids
    generator = BatchGenerator(model, tokenizer)
    schedule = {0: [("long", long_prompt, {"max_tokens": 2})], 1: [("short", PROMPTS[0], {"max_tokens": 40})]}
    got = run(generator, schedule, until_empty=False)
    assert generator.running == 1  # the long row finished and left
    assert generator._cache[0].offset < 64  # its slots were dropped
    while len(generator):
        for out in generator.step():
            got["short"].append(out.token)
    assert got["short"] == short_alone


def test_remove_drops_a_row_and_the_rest_go_on(loaded):
    model, tokenizer = loaded
    alone = generate(model, tokenizer, PROMPTS[1], max_tokens=10).token_ids
    generator = BatchGenerator(model, tokenizer)
    gone = generator.add(PROMPTS[3], max_tokens=50)
    kept = generator.add(PROMPTS[1], max_tokens=10)
    tokens = []
    for n in range(20):
        if n == 3:
            assert generator.remove(gone)
        for out in generator.step():
            assert out.row != gone or n < 3
            if out.row == kept:
                tokens.append(out.token)
    assert tokens == alone and len(generator) == 0
    assert not generator.remove(gone)


def test_max_batch_makes_rows_wait(loaded):
    model, tokenizer = loaded
    generator = BatchGenerator(model, tokenizer, max_batch=2)
    rows = [generator.add(p, max_tokens=3) for p in PROMPTS]
    first = generator.step()
    assert {o.row for o in first} == set(rows[:2]) and generator.running == 2
    finished = set()
    while len(generator):
        assert generator.running <= 2
        finished |= {o.row for o in generator.step() if o.finish_reason}
    assert finished | {o.row for o in first if o.finish_reason} == set(rows)


def test_seeded_rows_sample_the_same_in_any_batch(loaded):
    model, tokenizer = loaded
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, seed=7)
    alone = run(BatchGenerator(model, tokenizer), {0: [("a", PROMPTS[0], {"max_tokens": 10, "sampling": sampling})]})
    crowd = run(BatchGenerator(model, tokenizer), {
        0: [("b", PROMPTS[1], {"max_tokens": 10, "sampling": SamplingConfig(temperature=1.0)})],
        2: [("a", PROMPTS[0], {"max_tokens": 10, "sampling": sampling}), ("c", PROMPTS[2], {"max_tokens": 4})]})
    assert crowd["a"] == alone["a"]


def test_logprobs_and_text(loaded):
    model, tokenizer = loaded
    generator = BatchGenerator(model, tokenizer)
    row = generator.add(PROMPTS[0], max_tokens=5, logprobs=3)
    plain = generator.add(PROMPTS[2], max_tokens=5)
    outs = []
    while len(generator):
        outs += generator.step()
    mine = [o for o in outs if o.row == row]
    assert all(o.logprob is None and o.top_logprobs is None for o in outs if o.row == plain)
    ids = tokenizer.encode(PROMPTS[0])
    logits = model(mx.array([ids]))[0, -1].astype(mx.float32)
    expected = (logits - mx.logsumexp(logits)).tolist()
    first = mine[0]
    assert first.logprob == pytest.approx(expected[first.token], abs=1e-4)
    assert [t for t, _ in first.top_logprobs][0] == first.token  # greedy: the best token
    assert first.top_logprobs[1][1] == pytest.approx(sorted(expected)[-2], abs=1e-4)
    assert "".join(o.text for o in mine) == generate(model, tokenizer, PROMPTS[0], max_tokens=5).text
    assert mine[-1].finish_reason in ("stop", "length") and mine[-1].generated_tokens == len(mine)


def test_not_a_lazarus_model_is_refused(loaded):
    _, tokenizer = loaded
    with pytest.raises(LazarusError, match="Lazarus family model"):
        BatchGenerator(object(), tokenizer)


def test_repetition_penalty_rows_match_generate(loaded):
    model, tokenizer = loaded
    penalised = SamplingConfig(repetition_penalty=1.5, repetition_context_size=8)
    alone = generate(model, tokenizer, PROMPTS[1], max_tokens=12, sampling=penalised).token_ids
    got = run(BatchGenerator(model, tokenizer), {
        0: [("plain", PROMPTS[0], {"max_tokens": 12})],
        1: [("penalised", PROMPTS[1], {"max_tokens": 12, "sampling": penalised})]})
    assert got["penalised"] == alone


@pytest.mark.parametrize(("family", "overrides"), [("gemma2", {"sliding_window": 8}), ("qwen3", {}),
                                                   ("mistral", {"sliding_window": 6})])
def test_rows_joining_keep_their_tokens_in_other_families(tiny_checkpoint, family, overrides):
    """Soft-capping, sliding windows (moved with the rows), q/k norms before the rotation."""
    model, tokenizer, _ = load_model(tiny_checkpoint(family, **overrides))
    alone = [generate(model, tokenizer, p, max_tokens=12).token_ids for p in PROMPTS]
    schedule = {0: [(0, PROMPTS[0], {"max_tokens": 12})],
                3: [(1, PROMPTS[1], {"max_tokens": 12}), (2, PROMPTS[2], {"max_tokens": 12})],
                5: [(3, PROMPTS[3], {"max_tokens": 12})]}
    got = run(BatchGenerator(model, tokenizer), schedule)
    assert [got[i] for i in range(4)] == alone


def test_a_cached_prefix_is_reused_and_changes_nothing(loaded):
    model, tokenizer = loaded
    generator = BatchGenerator(model, tokenizer, prefix_cache_tokens=4096, min_prefix=4)
    first_prompt = tokenizer.encode(PROMPTS[3])
    first = run(generator, {0: [("first", first_prompt, {"max_tokens": 10})]})["first"]
    # the next turn repeats the first prompt and its answer, then goes on; it joins a running row
    follow_up = first_prompt + first + tokenizer.encode("and then", add_special_tokens=False)
    got = run(generator, {0: [("other", PROMPTS[0], {"max_tokens": 14})],
                          2: [("next", follow_up, {"max_tokens": 10}), ("key", follow_up, {"max_tokens": 10,
                                                                                           "prefix_key": "x"})]})
    assert generator._prefixes.hits == 1  # "key" has another prefix key: computed in full
    expected = generate(model, tokenizer, follow_up, max_tokens=10).token_ids
    assert got["next"] == expected and got["key"] == expected
    assert got["other"] == generate(model, tokenizer, PROMPTS[0], max_tokens=14).token_ids


def test_a_reused_prefix_joins_behind_masked_slots(loaded):
    model, tokenizer = loaded
    generator = BatchGenerator(model, tokenizer, prefix_cache_tokens=4096, min_prefix=4)
    prompt = tokenizer.encode(PROMPTS[1])
    answer = run(generator, {0: [("first", prompt, {"max_tokens": 6})]})["first"]
    follow_up = prompt + answer + tokenizer.encode("so", add_special_tokens=False)
    long_prompt = " ".join([PROMPTS[3]] * 3)  # longer than the follow-up: it joins behind masked slots
    got = run(generator, {0: [("long", long_prompt, {"max_tokens": 20})], 3: [("next", follow_up, {"max_tokens": 8})]})
    assert generator._prefixes.hits == 1
    assert got["next"] == generate(model, tokenizer, follow_up, max_tokens=8).token_ids
    assert got["long"] == generate(model, tokenizer, long_prompt, max_tokens=20).token_ids
