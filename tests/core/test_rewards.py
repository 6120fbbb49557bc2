"""Rewards by name (lazarus.rewards) through rewards registered by an in-process plugin, and
`lazarus eval` on a model whose answers are known."""

from __future__ import annotations

import json
import types

import pytest

import lazarus
from lazarus.errors import LazarusError
from lazarus.specs import RewardFunctionSpec

THIS = __name__


def starts_with_a(prompts, completions, records):
    return [None if r.get("skip") else float(c.startswith("a")) for c, r in zip(completions, records, strict=True)]


def per_row_length(prompt, completion, **record):
    return len(completion)


def raises_on_b(prompts, completions, records):
    return [1 / 0 if c == "b" else 1.0 for c in completions]


def too_few(prompts, completions, records):
    return [1.0]


def not_a_number(prompts, completions, records):
    return ["high" for _ in completions]


def matches_expected(prompts, completions, records):
    return [float(c == r["expected"]) for c, r in zip(completions, records, strict=True)]


@pytest.fixture
def toy_rewards():
    """Registers the functions above as reward plugins in-process; the registry is rebuilt after."""
    from lazarus.plugins import get_registry, reset_registry

    plugin = types.ModuleType("toy_rewards")

    @lazarus.hookimpl
    def register_reward_functions(register):
        for name, fn, batched in (("starts-with-a", "starts_with_a", True), ("row-length", "per_row_length", False),
                                  ("raises-on-b", "raises_on_b", True), ("too-few", "too_few", True),
                                  ("not-a-number", "not_a_number", True),
                                  ("matches-expected", "matches_expected", True)):
            register(RewardFunctionSpec(name=name, entry=f"{THIS}:{fn}", batched=batched))

    plugin.register_reward_functions = register_reward_functions
    assert get_registry().add_plugin(plugin, "toy-rewards").status == "loaded"
    yield
    reset_registry()


def test_weighted_total_of_batched_and_per_row_rewards(toy_rewards):
    from lazarus.rewards import load_rewards, score

    rewards = load_rewards(["starts-with-a:2", "row-length:0.5"])
    assert [(r.name, r.weight, r.batched) for r in rewards] == [("starts-with-a", 2.0, True),
                                                                ("row-length", 0.5, False)]
    scores = score(rewards, ["p"] * 3, ["ab", "xyz", "a"], [{}, {}, {"skip": True}])
    assert scores.by_reward == {"starts-with-a": [1.0, 0.0, None], "row-length": [2.0, 3.0, 1.0]}
    assert scores.total == [2 * 1 + 0.5 * 2, 0.5 * 3, 0.5 * 1]  # None rows leave that reward out
    assert scores.means() == {"starts-with-a": 0.5, "row-length": 2.0}


@pytest.mark.parametrize("name, message", [
    ("raises-on-b", "reward 'raises-on-b' raised ZeroDivisionError"),
    ("too-few", "reward 'too-few' returned 1 values for 2 completions"),
    ("not-a-number", "reward 'not-a-number' returned 'high' (str) for row 0 (data.jsonl:1)"),
])
def test_a_broken_reward_is_an_error_naming_the_reward_and_the_row(toy_rewards, name, message):
    from lazarus.rewards import load_rewards

    (reward,) = load_rewards([name])
    with pytest.raises(LazarusError) as info:
        reward(["p", "p"], ["a", "b"], [{}, {}], sources=["data.jsonl:1", "data.jsonl:2"])
    assert message in str(info.value)


def test_reward_options_are_checked(toy_rewards):
    from lazarus.rewards import load_rewards, parse_reward

    assert parse_reward("format:0.2") == ("format", 0.2)
    with pytest.raises(LazarusError, match="the weight 'x' is not a number"):
        parse_reward("format:x")
    with pytest.raises(LazarusError, match="no reward-function named 'nope'"):
        load_rewards(["nope"])
    with pytest.raises(LazarusError, match="given twice"):
        load_rewards(["starts-with-a", "starts-with-a:2"])


def test_eval_gives_the_known_accuracy(toy_rewards, tiny_checkpoint, tmp_path):
    """The tiny model's greedy answers are found one by one first; the data expects them on 3 of 5
    rows, so eval (batched) must report exactly 3/5 and write one result row per prompt."""
    from click.testing import CliRunner

    from lazarus.cli import main

    model_dir = tiny_checkpoint("llama")
    model, tokenizer, _ = lazarus.load_model(str(model_dir))
    prompts = ["What is 2 + 3?", "Compute 17 * 4.", "Hi there", "Find the value of 9 - 1.", "12 / 4 = ?"]
    answers = [lazarus.generate(model, tokenizer, p, max_tokens=6).text for p in prompts]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "expected": a if i % 2 == 0 else a + "?"}) + "\n"
                            for i, (p, a) in enumerate(zip(prompts, answers, strict=True))))
    out = tmp_path / "results.jsonl"
    args = ["eval", "--model", str(model_dir), "--data", str(data), "--reward", "matches-expected",
            "--max-tokens", "6", "--batch-size", "2", "--output", str(out), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["correct"], summary["accuracy"]) == (5, 3, 0.6)
    low, high = summary["accuracy_ci95"]
    assert low < 0.6 < high
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completion"] for r in rows] == answers
    assert [r["correct"] for r in rows] == [True, False, True, False, True]

    again = CliRunner().invoke(main, args)  # nothing is overwritten without --force
    assert again.exit_code == 2 and "already exists" in again.output
    assert len(out.read_text().splitlines()) == 5
