"""Environments experts act in, and :class:`VectorEnv`, which runs N copies as one batch.

Contract of an environment class (what ``EnvironmentSpec.entry`` names; docs/experts.md):
``name``, ``observation_space`` and ``action_space`` (:mod:`lazarus_experts.spaces`),
``reset(seed=None) -> observation`` and ``step(action) -> (observation, reward, done, info)``.
Episodes must end (``done``) within a bounded number of steps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from lazarus.errors import LazarusError
from lazarus_experts.spaces import Box, Discrete, Space, Text, as_space


class ReachEnv:
    """Move a value to a target under noise.

    Observation (4 floats): position, target, target − position, fraction of steps left. Action:
    a velocity in [−1, 1] (``discrete=True``: 0 = left, 1 = stay, 2 = right). Each step moves the
    position by ``speed · action`` plus Gaussian noise (``noise``) and clips it to [−1, 1]; the
    reward is ``−|target − position|`` after the move. An episode is ``max_steps`` steps.
    A random policy scores about −11, one that heads for the target and stays about −2.
    """

    name = "reach"

    def __init__(self, max_steps: int = 20, noise: float = 0.02, speed: float = 0.2, discrete: bool = False) -> None:
        self.max_steps, self.noise, self.speed = int(max_steps), float(noise), float(speed)
        if not 1 <= self.max_steps <= 1_000_000:
            raise ValueError(f"max_steps must be from 1 to 1000000, got {max_steps!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0 and math.isfinite(self.speed)):
            raise ValueError(f"noise must be a finite number >= 0 and speed a finite number, got {noise!r}, {speed!r}")
        self.discrete = bool(discrete)
        self.observation_space = Box([-1, -1, -2, 0], [1, 1, 2, 1])
        self.action_space = Discrete(3) if self.discrete else Box([-1.0], [1.0])
        self._rng = random.Random()
        self._position: float | None = None
        self._target: float | None = None
        self._steps = 0

    def _observation(self) -> list[float]:
        assert self._position is not None and self._target is not None  # (set by reset)
        return [self._position, self._target, self._target - self._position,
                (self.max_steps - self._steps) / self.max_steps]

    def reset(self, seed: int | None = None) -> list[float]:
        self._rng = random.Random(seed)
        self._position = self._rng.uniform(-1.0, 1.0)
        self._target = self._rng.uniform(-0.8, 0.8)
        self._steps = 0
        return self._observation()

    def step(self, action) -> tuple[list[float], float, bool, dict]:
        if self._position is None or self._target is None:  # (reset sets both)
            raise LazarusError("reach: call reset() before step()")
        if self.discrete:
            if not self.action_space.contains(action):
                raise LazarusError(f"reach: action {action!r} is not one of 0 (left), 1 (stay), 2 (right)")
            velocity = float(action) - 1.0
        else:
            value = action[0] if isinstance(action, (list, tuple, np.ndarray)) else action
            velocity = float(value)
            if not math.isfinite(velocity):
                raise LazarusError(f"reach: action {action!r} is not a finite number")
            velocity = max(-1.0, min(1.0, velocity))
        self._position += self.speed * velocity + self._rng.gauss(0.0, self.noise)
        self._position = max(-1.0, min(1.0, self._position))
        self._steps += 1
        distance = abs(self._target - self._position)
        return self._observation(), -distance, self._steps >= self.max_steps, {"distance": distance}


def observation_size(space) -> int:
    """The length of the vector an expert sees for one observation of ``space``."""
    return cast("Space", as_space(space, "observation_space")).size  # (not a Text space: experts cannot read one)


def encode_observation(space, observation) -> np.ndarray:
    """An observation as the float vector an expert reads: one-hot for :class:`Discrete`, the
    values for :class:`Box`."""
    space = cast("Space", as_space(space, "observation_space"))  # (not a Text space: experts cannot read one)
    if isinstance(space, Discrete):
        vector = np.zeros(space.n, dtype=np.float32)
        vector[int(observation)] = 1.0
        return vector
    vector = np.asarray(observation, dtype=np.float32).reshape(-1)
    if vector.size != space.size:
        raise LazarusError(f"observation {observation!r} has {vector.size} values; the space has {space.size}")
    return vector


def check_trainable(env, name: str) -> None:
    """Raise :class:`LazarusError` unless ``env`` has spaces an expert can read and act in."""
    for attribute in ("observation_space", "action_space", "reset", "step"):
        if not hasattr(env, attribute):
            raise LazarusError(f"environment {name!r} has no {attribute}; see docs/experts.md for the contract")
    try:
        spaces = [as_space(env.observation_space), as_space(env.action_space)]
        if any(isinstance(space, Text) for space in spaces):
            raise LazarusError("text")
    except LazarusError:
        raise LazarusError(f"environment {name!r} is not one an expert can act in: its spaces are "
                           f"{env.observation_space!r} / {env.action_space!r}; experts need Discrete or Box "
                           "spaces (a text environment is run with `lazarus experts run`)") from None


class VectorEnv:
    """``num_envs`` copies of an environment stepped as one batch.

    ``reset(seed)`` resets copy ``i`` with ``seed + i`` and returns the encoded observations
    (N, observation_size) float32; ``step(actions)`` takes one action per copy and returns
    ``(observations, rewards (N,), dones (N,) bool, infos)``. A copy whose episode has ended is not
    stepped again until the next ``reset``: it reports its last observation, reward 0 and done.
    """

    def __init__(self, make_env: Callable[[], Any], num_envs: int) -> None:
        if num_envs < 1:
            raise LazarusError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_env() for _ in range(num_envs)]
        first = self.envs[0]
        # (an expert's environment: Discrete or Box spaces, as check_trainable requires)
        self.observation_space = cast("Space", as_space(first.observation_space, "observation_space"))
        self.action_space = cast("Space", as_space(first.action_space, "action_space"))
        self.observation_size = self.observation_space.size
        self.done = np.ones(num_envs, dtype=bool)
        self._last = np.zeros((num_envs, self.observation_size), dtype=np.float32)

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        for i, env in enumerate(self.envs):
            self._last[i] = encode_observation(self.observation_space,
                                               env.reset(seed=None if seed is None else seed + i))
        self.done[:] = False
        return self._last.copy()

    def step(self, actions: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        if len(actions) != self.num_envs:
            raise LazarusError(f"VectorEnv.step: {len(actions)} actions for {self.num_envs} environments")
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        infos: list[dict] = [{} for _ in self.envs]
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            if self.done[i]:
                continue
            observation, reward, done, info = env.step(action)
            self._last[i] = encode_observation(self.observation_space, observation)
            rewards[i], self.done[i], infos[i] = float(reward), bool(done), info or {}
        return self._last.copy(), rewards, self.done.copy(), infos


def make_environment(name: str, options: dict | None = None):
    """An instance of the environment registered as ``name`` (any plugin's), built with ``options``."""
    from lazarus.plugins import get

    cls = get("environment", name).load()
    try:
        return cls(**(options or {}))
    except (TypeError, ValueError, OverflowError) as exc:  # a wrong key or a value of the wrong kind
        given = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items() if k != "experts") or "none"
        raise LazarusError(f"environment {name!r} does not accept these options ({given}): {exc}; check "
                           "--env-option KEY=VALUE") from None


def to_env_actions(space, actions: np.ndarray) -> list:
    """Batched actions (N,) or (N, d) as the per-copy values environments take (int or list of floats)."""
    space = as_space(space, "action_space")
    if isinstance(space, Discrete):
        return [int(a) for a in np.asarray(actions).reshape(-1)]
    return [list(map(float, row)) for row in np.asarray(actions).reshape(len(actions), -1)]
