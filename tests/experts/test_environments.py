"""Environments: reach is seeded and bounded; VectorEnv runs N copies as one batch; text
environments are refused by expert training with a clear message."""

from __future__ import annotations

import numpy as np
import pytest

from lazarus.errors import LazarusError


def test_reach_same_seed_same_episode_and_heading_for_the_target_pays():
    from lazarus_experts.environments import make_environment

    env = make_environment("reach")
    first = env.reset(seed=7)
    steps = [env.step([0.3]) for _ in range(3)]
    assert env.reset(seed=7) == first and [env.step([0.3]) for _ in range(3)] == steps
    obs, total, done = env.reset(seed=7), 0.0, False
    while not done:  # a proportional controller
        obs, reward, done, info = env.step([max(-1.0, min(1.0, obs[2] / env.speed))])
        total += reward
    assert total > -2.5 and info["distance"] < 0.1
    discrete = make_environment("reach", {"discrete": True})
    discrete.reset(seed=0)
    with pytest.raises(LazarusError, match="not one of 0"):
        discrete.step(5)


def test_vector_env_runs_copies_as_one_batch():
    from lazarus_experts.environments import VectorEnv, make_environment

    venv = VectorEnv(lambda: make_environment("reach", {"max_steps": 2}), 3)
    obs = venv.reset(seed=10)
    single = make_environment("reach", {"max_steps": 2})
    np.testing.assert_allclose(obs[1], single.reset(seed=11), rtol=1e-6)  # copy i is seeded with seed + i
    obs, rewards, dones, _ = venv.step([[0.5], [0.5], [0.5]])
    assert obs.shape == (3, 4) and rewards.shape == (3,) and not dones.any()
    obs, rewards, dones, _ = venv.step([[0.5]] * 3)
    assert dones.all()
    again, rewards, dones, _ = venv.step([[0.5]] * 3)  # finished copies are not stepped again
    np.testing.assert_array_equal(again, obs)
    assert (rewards == 0).all() and dones.all()
    with pytest.raises(LazarusError, match="2 actions for 3 environments"):
        venv.step([[0.0], [0.0]])


def test_text_environments_are_not_trainable(lazarus_cli, tmp_path):
    result = lazarus_cli("experts", "train", "--env", "arith-delegate", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "experts need Discrete or Box spaces" in result.output
