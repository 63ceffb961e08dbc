"""Evaluation protocols: trials of consecutive episodes with the agent's state kept or reset by its `observe`,
per-episode returns in order, env constructor kwargs honoured."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from seqrl.presets import EnvPreset, load_env
from seqrl.runners.evaluate import RandomPolicy, evaluate


class Lessons(gym.Env):
    """Episode i of an env instance (i = 0, 1, ...) lasts one step and pays 1 if the action is i mod 4: only an
    agent that remembers how many episodes it has played scores on every episode."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(4)

    def __init__(self):
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(action == self.episode % 4), True, False, {"success": action == self.episode % 4}


gym.register("seqrl-test/Lessons-v0", entry_point=Lessons)


class Counter:
    """Acts with the number of episodes it has seen; `keep=False` forgets it at each episode end, as DT does."""

    def __init__(self, keep: bool):
        self.keep = keep

    def initial_state(self, n, device):
        return torch.zeros(n, dtype=torch.long)

    def act(self, obs, state):
        return state % 4, state

    def observe(self, state, reward, done):
        return state + done.long() if self.keep else torch.where(done, 0, state)


@pytest.mark.parametrize("keep", [True, False])
def test_trials_of_consecutive_episodes_keep_or_reset_the_state(keep):
    res = evaluate(Counter(keep), "seqrl-test/Lessons-v0", trials=3, episodes=5)
    assert res.returns.shape == (3, 5) and res.lengths.shape == (3, 5) and (res.lengths == 1).all()
    want = np.ones(5) if keep else np.array([1.0, 0, 0, 0, 1])  # forgetting: right only on episodes 0 and 4
    np.testing.assert_array_equal(res.curve(), want)
    np.testing.assert_array_equal(res.success, np.tile(want, (3, 1)))
    s = res.summary()
    assert s["last_episode_return_mean"] == want[-1] and s["return_mean"] == pytest.approx(want.mean())


def test_env_kwargs_and_episode_limit_reach_the_evaluation_env():
    """An offline agent trained on a configured env is evaluated on that configuration, not the default one."""
    tmaze = load_env("tmaze", {"env_kwargs": {"length": 5}})
    res = evaluate(RandomPolicy(gym.spaces.Discrete(4), seed=0), tmaze, trials=6)
    assert (res.lengths == 6).all()  # the corridor of 5 steps, then the turn; the default length is 10
    pendulum = EnvPreset(name="p", env_id="Pendulum-v1", max_episode_steps=7)
    assert (evaluate(RandomPolicy(gym.spaces.Box(-2, 2, (1,)), seed=0), pendulum, trials=2).lengths == 7).all()
