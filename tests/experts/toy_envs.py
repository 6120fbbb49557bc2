"""A third-party environment, registered by a plugin made in the test (as an installed one would be)."""

from __future__ import annotations

import random

import lazarus
from lazarus.specs import EnvironmentSpec
from lazarus_experts.spaces import Discrete


class MatchCueEnv:
    """Observation: a cue 0 or 1 (one-hot for the expert); action 0 or 1; reward 1 when the action
    matches the cue. Five steps: a random policy scores 2.5, a perfect one 5."""

    name = "match-cue"

    def __init__(self, length: int = 5) -> None:
        self.observation_space = Discrete(2)
        self.action_space = Discrete(2)
        self.length = length

    def reset(self, seed=None):
        self._rng = random.Random(seed)
        self._steps = 0
        self._cue = self._rng.randrange(2)
        return self._cue

    def step(self, action):
        reward = float(action == self._cue)
        self._steps += 1
        self._cue = self._rng.randrange(2)
        return self._cue, reward, self._steps >= self.length, {}


class MatchCuePlugin:
    __name__ = "match_cue_plugin"

    @staticmethod
    @lazarus.hookimpl
    def register_environments(register):
        register(EnvironmentSpec(name="match-cue", entry="tests.experts.toy_envs:MatchCueEnv",
                                 description="Say which cue you see"))
