"""Steering: coefficient 0 is plain generation; a real coefficient changes the text."""

from __future__ import annotations

import mlx.core as mx

from lazarus.generation import generate
from lazarus_introspect.steering import mean_difference_direction, steer, steering_hooks

PROMPT = "The cat sat on"


def test_coefficient_zero_equals_plain_generation(loaded):
    model, tokenizer = loaded("llama")
    plain = generate(model, tokenizer, PROMPT, max_tokens=12, temperature=0.0)
    direction = mx.random.normal((model.args.hidden_size,), key=mx.random.key(0))
    run = steer(model, tokenizer, PROMPT, direction, [0, 1], 0.0, max_tokens=12)
    assert run["unsteered_token_ids"] == list(plain.token_ids)
    assert run["steered_token_ids"] == list(plain.token_ids)
    assert run["steered"] == plain.text and not run["changed"]


def test_steering_changes_generation_and_hooks_are_removed_after(loaded):
    model, tokenizer = loaded("llama")
    plain = generate(model, tokenizer, PROMPT, max_tokens=12, temperature=0.0)
    direction = mean_difference_direction(model, tokenizer, ["I love this, wonderful"], ["I hate this, awful"], 0)
    run = steer(model, tokenizer, PROMPT, direction * (8.0 / mx.linalg.norm(direction)), [0], 4.0, max_tokens=12)
    assert run["changed"] and run["unsteered_token_ids"] == list(plain.token_ids)
    # nothing stays attached: generation afterwards is the plain one again
    assert list(generate(model, tokenizer, PROMPT, max_tokens=12, temperature=0.0).token_ids) == list(plain.token_ids)
    assert steering_hooks(direction, [0, 1], 1.0)[1][0] == "blocks.1.hook_resid_post"
