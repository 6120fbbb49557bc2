"""A prompt longer than the model's max_position_embeddings, or --max-tokens that run past it: one
warning line (RoPE-scaling users may mean it), and generation still happens."""

from __future__ import annotations

import warnings

import pytest

import lazarus
from lazarus.generation import ContextLengthWarning, generate


@pytest.fixture(scope="module")
def short_context(tiny_checkpoint):
    return tiny_checkpoint("llama", max_position_embeddings=16)


LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


def test_a_prompt_past_the_context_warns_once_and_still_generates(lazarus_cli, short_context):
    result = lazarus_cli("generate", "--model", short_context, "--prompt", LONG, "--max-tokens", "3", "--quiet")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warned) == 1, result.stderr
    assert "longer than the model's context of 16 (max_position_embeddings)" in warned[0]
    assert result.stdout.strip()  # it generated anyway


def test_max_tokens_past_the_context_says_so(lazarus_cli, short_context):
    result = lazarus_cli("generate", "--model", short_context, "--prompt", "1 + 1", "--max-tokens", "40", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Warning: --max-tokens 40 after a" in result.stderr
    assert "can run past the model's context of 16 tokens" in result.stderr


def test_within_the_context_there_is_no_warning(lazarus_cli, short_context):
    result = lazarus_cli("generate", "--model", short_context, "--prompt", "1 + 1", "--max-tokens", "2", "--quiet")
    assert result.exit_code == 0 and "Warning" not in result.stderr


def test_the_python_api_warns_with_a_category_callers_can_filter(short_context):
    model, tokenizer, _ = lazarus.load_model(str(short_context))
    with pytest.warns(ContextLengthWarning, match="longer than the model's context of 16"):
        generate(model, tokenizer, LONG, max_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, tokenizer, "1 + 1", max_tokens=2)  # within the context: silent
