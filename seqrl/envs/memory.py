"""Memory tasks: the answer depends on something seen a given number of steps earlier, and on nothing
the current observation shows. The memory length is a constructor argument
(`gym.make("seqrl/TMaze-v0", length=50)`).

TMaze ("remember the cue"; the passive T-maze of Ni et al. 2023, arXiv:2307.03864, after Bakker 2001):
    the first observation shows a cue, up or down; then the agent walks a corridor of `length` steps
    that all look alike (it moves one cell per step, whatever it does), and at the junction, which it
    sees, it must turn the way the cue said. Observation Box(3): [cue up, cue down, at junction].
    Actions Discrete(2): 0 up, 1 down (ignored in the corridor). Reward +1 for the right turn, -1 for
    the wrong one, 0 elsewhere; the episode ends at the junction after `length + 1` steps.
    `info["success"]` on the last step says whether the turn was right. A memoryless policy succeeds
    half of the time (return 0); the optimal one always (return 1).

RepeatPrevious ("repeat what you saw k steps ago", after POPGym's RepeatPrevious, Morad et al. 2023):
    each step shows one of `n_symbols` symbols, one-hot, drawn uniformly. From step k on, the action
    must name the symbol shown k steps earlier: reward +1/`queries` when right, else 0 (actions
    before step k are not scored). The episode lasts k + `queries` steps; `info["success"]` at the end
    is whether every answer was right, `info["accuracy"]` the fraction right. Chance accuracy is
    1/`n_symbols`.

Count ("count what you were shown and report it"): for `k` steps each observation shows one of
    `n_symbols` symbols, drawn uniformly; then `queries` steps each ask about one symbol, drawn
    uniformly, and the action must say how many times it was shown (0 .. k). Observation
    Box(2 * n_symbols): [shown symbol one-hot, queried symbol one-hot] (one half is zero in each phase;
    the observation after the last step is all zero). Actions Discrete(k + 1), the count (ignored while
    symbols are shown). Reward +1/`queries` for an exact count, -1/`queries` otherwise, so returns lie
    in [-1, 1]. The episode lasts k + `queries` steps; `info["success"]` and `info["accuracy"]` at the
    end as in RepeatPrevious. A memoryless policy can at best answer the most likely count of a
    Binomial(k, 1/n_symbols) (k=8, n_symbols=3: right 27% of the time, return about -0.45); random
    answers score 2/(k + 1) - 1 on average; the optimal policy 1.

Autoencode ("repeat the sequence back"): for `k` steps each observation shows one of `n_symbols`
    symbols, drawn uniformly; then for `k` steps the observation only says "recall", and the action at
    recall step i must name the i-th symbol shown. Observation Box(n_symbols + 1): [symbol one-hot,
    recall flag] (all zero after the last step). Actions Discrete(n_symbols) (ignored while symbols are
    shown). Reward +1/k for each right symbol, -1/k for each wrong one: returns in [-1, 1]. The episode
    lasts 2k steps; `info["success"]` and `info["accuracy"]` at the end. Any memoryless policy is right
    1/n_symbols of the time (return 2/n_symbols - 1: -0.5 with 4 symbols); the optimal one always (1).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.envs.checks import check_int


class TMaze(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, length: int = 10):
        self.length = check_int("TMaze", "length", length, 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        if self._t == self.length:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        if self._t == self.length:  # at the junction: the turn decides the episode
            success = int(action) == self._cue
            return self._obs(), 1.0 if success else -1.0, True, False, {"success": success}
        self._t += 1
        return self._obs(), 0.0, False, False, {}


class RepeatPrevious(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, k: int = 4, n_symbols: int = 4, queries: int = 16):
        self.k, self.n = check_int("RepeatPrevious", "k", k, 1), check_int("RepeatPrevious", "n_symbols", n_symbols, 2)
        self.queries = check_int("RepeatPrevious", "queries", queries, 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n,), np.float32)
        self.action_space = gym.spaces.Discrete(self.n)
        self._symbols = np.zeros(0, np.int64)
        self._t = 0
        self._correct = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n, np.float32)
        obs[self._symbols[self._t]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(self.n, size=self.k + self.queries)
        self._t = 0
        self._correct = 0
        return self._obs(), {}

    def step(self, action):
        reward = 0.0
        if self._t >= self.k:
            right = int(action) == int(self._symbols[self._t - self.k])
            self._correct += right
            reward = 1.0 / self.queries if right else 0.0
        self._t += 1
        if self._t == self.k + self.queries:  # the last observation repeats the last one shown
            self._t -= 1
            info = {"success": self._correct == self.queries, "accuracy": self._correct / self.queries}
            return self._obs(), reward, True, False, info
        return self._obs(), reward, False, False, {}


class Count(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, k: int = 8, n_symbols: int = 3, queries: int = 3):
        self.k, self.n = check_int("Count", "k", k, 1), check_int("Count", "n_symbols", n_symbols, 2)
        self.queries = check_int("Count", "queries", queries, 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 * self.n,), np.float32)
        self.action_space = gym.spaces.Discrete(self.k + 1)
        self._shown = np.zeros(0, np.int64)
        self._asked = np.zeros(0, np.int64)
        self._counts = np.zeros(0, np.int64)
        self._t = 0
        self._correct = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(2 * self.n, np.float32)
        if self._t < self.k:
            obs[self._shown[self._t]] = 1.0
        elif self._t < self.k + self.queries:
            obs[self.n + self._asked[self._t - self.k]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._shown = self.np_random.integers(self.n, size=self.k)
        self._asked = self.np_random.integers(self.n, size=self.queries)
        self._counts = np.bincount(self._shown, minlength=self.n)
        self._t = 0
        self._correct = 0
        return self._obs(), {}

    def step(self, action):
        reward = 0.0
        if self._t >= self.k:  # a query: the count of the asked symbol, exactly
            right = int(action) == int(self._counts[self._asked[self._t - self.k]])
            self._correct += right
            reward = (1.0 if right else -1.0) / self.queries
        self._t += 1
        if self._t == self.k + self.queries:
            info = {"success": self._correct == self.queries, "accuracy": self._correct / self.queries}
            return self._obs(), reward, True, False, info
        return self._obs(), reward, False, False, {}


class Autoencode(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, k: int = 4, n_symbols: int = 4):
        self.k, self.n = check_int("Autoencode", "k", k, 1), check_int("Autoencode", "n_symbols", n_symbols, 2)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(self.n)
        self._symbols = np.zeros(0, np.int64)
        self._t = 0
        self._correct = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n + 1, np.float32)
        if self._t < self.k:
            obs[self._symbols[self._t]] = 1.0
        elif self._t < 2 * self.k:
            obs[self.n] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(self.n, size=self.k)
        self._t = 0
        self._correct = 0
        return self._obs(), {}

    def step(self, action):
        reward = 0.0
        if self._t >= self.k:  # recall step i = t - k: the i-th symbol shown
            right = int(action) == int(self._symbols[self._t - self.k])
            self._correct += right
            reward = (1.0 if right else -1.0) / self.k
        self._t += 1
        if self._t == 2 * self.k:
            info = {"success": self._correct == self.k, "accuracy": self._correct / self.k}
            return self._obs(), reward, True, False, info
        return self._obs(), reward, False, False, {}
