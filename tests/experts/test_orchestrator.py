"""Orchestrator and arith-delegate: every failure comes back as an observation and the episode goes
on or ends cleanly; a scripted LLM that delegates gets the expert's answer in the transcript; an
episode with a real (tiny, random) model runs from the CLI."""

from __future__ import annotations

import json

import pytest


def scripted(*turns):
    """An "LLM" that says the given turns in order, whatever it is shown; records what it saw."""
    seen = []

    def llm(messages):
        seen.append(list(messages))
        return turns[len(seen) - 1]

    llm.seen = seen
    return llm


def arith(**options):
    from lazarus_experts.environments import make_environment

    return make_environment("arith-delegate", options)


def test_calculator_then_final_answer_is_rewarded():
    from lazarus_experts.orchestrator import run_episode

    env = arith()
    question = env.reset(seed=3)
    expression = question.removeprefix("What is ").removesuffix("?")
    llm = scripted(f'I will use the calculator. {{"action": "tool", "tool": "calculator", "input": {{"expression": "{expression}"}}}}',
                   '{"action": "think", "thought": "the calculator answered"}',
                   f'```json\n{{"action": "final", "answer": "{env.answer}"}}\n```')
    episode = run_episode(env, llm, seed=3)
    assert episode.reward == 1.0 and episode.steps == 3 and episode.answer == str(env.answer)
    observations = [json.loads(e["text"]) for e in episode.transcript if e["role"] == "observation"]
    assert observations[0] == {"tool": "calculator", "result": env.answer}
    assert observations[1] == {"ok": "noted; continue"}
    # the LLM saw the instructions, the question and the calculator's result
    last_seen = llm.seen[-1]
    assert "calculator" in last_seen[0]["content"] and last_seen[1]["content"] == question
    assert json.loads(last_seen[3]["content"])["result"] == env.answer


@pytest.mark.parametrize("turn, expected", [
    ("the answer is probably 12", "no JSON object found"),
    ('{"action": "tool", "tool": "calculator", "input": {"expression": "1 +"', "malformed JSON"),
    ('{"action": "dance"}', "unknown action 'dance'"),
    ('{"action": "tool", "tool": "weather", "input": {}}', "unknown tool 'weather'; available: calculator, boom"),
    ('{"action": "delegate", "expert": "planner", "input": [[1, 2]]}', "unknown expert 'planner'; available: adder"),
    ('{"action": "tool", "tool": "boom", "input": {}}', "tool 'boom' failed: RuntimeError: the tool broke"),
    ('{"action": "tool", "tool": "calculator", "input": {"expression": "__import__(\'os\')"}}', "tool 'calculator' failed"),
    ('{"action": "delegate", "expert": "adder", "input": [[1, 2, 3]]}', "each a list of 2 numbers"),
    ('{"action": "final"}', 'needs "answer"'),
])
def test_each_failure_is_an_observation_and_the_episode_goes_on(turn, expected, adder_registry):
    def boom():
        raise RuntimeError("the tool broke")

    env = arith(experts=adder_registry, tools={"boom": boom})
    env.reset(seed=0)
    observation, reward, done, info = env.step(turn)
    assert expected in json.loads(observation)["error"]
    assert (reward, done) == (0.0, False)
    observation, reward, done, info = env.step(f'{{"action": "final", "answer": "{env.answer}"}}')
    assert (reward, done) == (1.0, True)


def test_step_budget_ends_the_episode_cleanly():
    from lazarus_experts.orchestrator import run_episode

    episode = run_episode(arith(max_steps=3), scripted('{"action": "think", "thought": "hmm"}', "no idea", "{"), seed=1)
    assert episode.steps == 3 and episode.reward == 0.0 and episode.answer is None
    last = json.loads(episode.transcript[-1]["text"])
    assert "step budget of 3 reached" in last["budget"] and "malformed JSON" in last["error"]


@pytest.fixture
def adder_registry():
    import mlx.core as mx

    from lazarus_experts.experts import ExpertConfig, ExpertRegistry, create_expert

    mx.random.seed(0)
    config = ExpertConfig(observation_size=2, action_space={"kind": "discrete", "n": 10}, hidden_size=8)
    return ExpertRegistry({"adder": create_expert("gru", config)})


def test_a_scripted_llm_that_delegates_gets_the_experts_answer(adder_registry, tmp_path):
    from lazarus_experts.experts import act
    from lazarus_experts.orchestrator import run_episode

    adder_registry.save(tmp_path / "experts")
    env = arith(experts=str(tmp_path / "experts"))  # loaded from disk, as `--experts DIR` does
    digits = [[3, 4], [5, 1], [9, 9]]
    llm = scripted(json.dumps({"action": "delegate", "expert": "adder", "input": digits}),
                   '{"action": "final", "answer": "0"}')
    episode = run_episode(env, llm, seed=0)
    expected = act(adder_registry.get("adder"), digits)
    delegated = json.loads(episode.transcript[2]["text"])
    assert delegated == {"expert": "adder", "result": expected}
    assert len(expected) == 3 and all(0 <= a < 10 for a in expected)
    assert "Experts: adder" in llm.seen[0][0]["content"]
    assert json.loads(llm.seen[1][-1]["content"])["result"] == expected


def test_run_an_episode_with_a_model_from_the_cli(lazarus_cli, tiny_checkpoint):
    model = tiny_checkpoint("llama")
    result = lazarus_cli("experts", "run", "--env", "arith-delegate", "--model", str(model), "--max-steps", "2",
                         "--max-tokens", "8", "--seed", "4")
    assert result.exit_code == 0, result.output
    assert "[TASK] What is" in result.output and result.output.count("[LLM]") == 2
    assert "step budget of 2 reached" in result.output and "reward 0" in result.output  # random weights
    episode = lazarus_cli("experts", "run", "--model", str(model), "--max-steps", "1", "--max-tokens", "4", "--json").json()
    assert episode["steps"] == 1 and [e["role"] for e in episode["transcript"]] == ["task", "llm", "observation"]
    wrong = lazarus_cli("experts", "run", "--env", "reach", "--model", str(model))
    assert wrong.exit_code == 2 and "not a text environment" in wrong.output


def test_mcp_without_the_package_is_a_one_line_error(lazarus_cli, tiny_checkpoint, monkeypatch):
    import importlib.util
    import sys

    if importlib.util.find_spec("mcp") is not None:
        monkeypatch.setitem(sys.modules, "mcp", None)  # as if it were not installed
    result = lazarus_cli("experts", "run", "--model", str(tiny_checkpoint("llama")), "--mcp", "my-server --stdio")
    assert result.exit_code == 2 and "pip install mcp" in result.output and "Traceback" not in result.output
