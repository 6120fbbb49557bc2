"""GRU/LSTM experts: batched step shapes, state carry, save/load, bounded continuous actions,
named instances saved and loaded together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lazarus.errors import LazarusError

KINDS = ["gru", "lstm"]


def make(kind, action_space, observation_size=5, **overrides):
    import mlx.core as mx

    from lazarus_experts.experts import ExpertConfig, create_expert

    mx.random.seed(0)
    config = ExpertConfig(observation_size=observation_size, action_space=action_space, hidden_size=8,
                          **{"num_layers": 2, **overrides})
    return create_expert(kind, config)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("space", [{"kind": "discrete", "n": 3}, {"kind": "continuous", "low": [-1, 0], "high": [1, 2]}])
def test_step_shapes(kind, space):
    import mlx.core as mx

    expert = make(kind, space)
    state = expert.reset(4)
    dist, value, state = expert.step(mx.ones((4, 5)), state)
    action, raw = dist.sample()
    assert value.shape == (4,)
    assert dist.log_prob(raw).shape == (4,) and dist.entropy().shape == (4,)
    assert action.shape == ((4,) if space["kind"] == "discrete" else (4, 2))
    assert len(state) == 2  # one entry per layer
    no_value = make(kind, space, value_head=False)
    assert no_value.step(mx.ones((4, 5)), no_value.reset(4))[1] is None
    with pytest.raises(LazarusError, match="observation_size 5"):
        expert.step(mx.ones((4, 6)), expert.reset(4))


@pytest.mark.parametrize("kind", KINDS)
def test_two_half_sequences_equal_one_whole(kind):
    import mlx.core as mx

    expert = make(kind, {"kind": "discrete", "n": 4})
    obs = mx.random.normal((3, 10, 5))
    whole, whole_values, _ = expert.sequence(obs)
    first, first_values, state = expert.sequence(obs[:, :6])
    second, second_values, _ = expert.sequence(obs[:, 6:], state)
    np.testing.assert_allclose(np.array(whole.logits),
                               np.concatenate([np.array(first.logits), np.array(second.logits)], axis=1), atol=1e-5)
    np.testing.assert_allclose(np.array(whole_values),
                               np.concatenate([np.array(first_values), np.array(second_values)], axis=1), atol=1e-5)
    state = expert.reset(3)  # step by step gives the same as the sequence
    for t in range(10):
        dist, _, state = expert.step(obs[:, t], state)
        np.testing.assert_allclose(np.array(dist.logits), np.array(whole.logits[:, t]), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_gives_identical_outputs(kind, tmp_path):
    import mlx.core as mx

    from lazarus_experts.experts import load_expert, save_expert

    expert = make(kind, {"kind": "continuous", "low": [-2], "high": [3]})
    save_expert(expert, tmp_path / "e", environment="reach")
    assert {p.name for p in (tmp_path / "e").iterdir()} == {"expert_config.json", "expert.safetensors", "lazarus.json"}
    record = json.loads((tmp_path / "e" / "lazarus.json").read_text())
    assert record["expert"] == kind and record["environment"] == "reach" and record["config_sha256"]
    loaded = load_expert(tmp_path / "e")
    assert type(loaded) is type(expert) and loaded.config == expert.config
    obs = mx.random.normal((2, 7, 5))
    a, av, _ = expert.sequence(obs)
    b, bv, _ = loaded.sequence(obs)
    assert np.array_equal(np.array(a.mean), np.array(b.mean)) and np.array_equal(np.array(av), np.array(bv))
    assert np.array_equal(np.array(a.log_std), np.array(b.log_std))


def test_broken_expert_directories_are_one_line_errors(tmp_path):
    from lazarus_experts.experts import load_expert, save_expert

    with pytest.raises(LazarusError, match="not an expert directory"):
        load_expert(tmp_path)
    save_expert(make("gru", {"kind": "discrete", "n": 2}), tmp_path / "e")
    config = json.loads((tmp_path / "e" / "expert_config.json").read_text())
    config["config"]["hidden_size"] = 16
    (tmp_path / "e" / "expert_config.json").write_text(json.dumps(config))
    with pytest.raises(LazarusError, match="does not fit a gru expert"):
        load_expert(tmp_path / "e")
    config["expert"] = "transformer"
    (tmp_path / "e" / "expert_config.json").write_text(json.dumps(config))
    with pytest.raises(LazarusError, match="no expert named 'transformer'"):
        load_expert(tmp_path / "e")


@pytest.mark.parametrize("kind", KINDS)
def test_continuous_actions_stay_in_bounds(kind):
    import mlx.core as mx

    expert = make(kind, {"kind": "continuous", "low": [-0.5, 10], "high": [0.5, 11]})
    # push the policy mean far out and the spread up: samples and modes must still be inside
    expert.policy.bias = mx.array([40.0, -40.0])
    expert.log_std = mx.array([2.0, 2.0])
    dist, _, _ = expert.step(mx.random.normal((256, 5)) * 10, expert.reset(256))
    for action in (dist.sample(mx.random.key(1))[0], dist.mode()):
        a = np.array(action)
        assert (a[:, 0] >= -0.5).all() and (a[:, 0] <= 0.5).all()
        assert (a[:, 1] >= 10).all() and (a[:, 1] <= 11).all()
    with pytest.raises(LazarusError, match="finite bounds"):
        make(kind, {"kind": "continuous", "low": [-float("inf")], "high": [1]})


def test_named_instances_are_saved_and_loaded_together(tmp_path):
    import mlx.core as mx

    from lazarus_experts.experts import ExpertRegistry

    registry = ExpertRegistry()
    registry.add("adder", make("gru", {"kind": "discrete", "n": 10}, observation_size=20))
    registry.add("controller", make("lstm", {"kind": "continuous", "low": [-1], "high": [1]}, observation_size=4))
    registry.add("controller-2", make("lstm", {"kind": "continuous", "low": [-1], "high": [1]}, observation_size=4))
    with pytest.raises(LazarusError, match="already registered"):
        registry.add("adder", registry.get("adder"))
    with pytest.raises(LazarusError, match="kebab-case"):
        registry.add("My Expert", registry.get("adder"))
    registry.save(tmp_path / "experts")
    loaded = ExpertRegistry.load(tmp_path / "experts")
    assert loaded.names() == ["adder", "controller", "controller-2"]
    assert (tmp_path / "experts" / "lazarus.json").is_file()
    obs = mx.random.normal((1, 3, 4))
    np.testing.assert_array_equal(np.array(loaded.get("controller").sequence(obs)[0].mean),
                                  np.array(registry.get("controller").sequence(obs)[0].mean))
    assert type(loaded.get("adder")).__name__ == "GRUExpert"
    with pytest.raises(LazarusError, match="registered: adder, controller, controller-2"):
        loaded.get("planner")
