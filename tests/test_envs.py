"""The memory tasks in seqrl.envs: Gymnasium's checker, the rules of each task, registration, bad kwargs."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import seqrl  # noqa: F401  importing seqrl registers the seqrl/... ids
from seqrl.envs import RepeatPrevious, TMaze
from seqrl.presets import EnvPreset
from seqrl.runners.evaluate import evaluate


@pytest.mark.parametrize("env", [TMaze(1), TMaze(7), RepeatPrevious(3), RepeatPrevious(1, n_symbols=2, queries=1)])
def test_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)


def test_tmaze_rules():
    env = gym.make("seqrl/TMaze-v0", length=5)
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        cue = int(obs[1] == 1.0)
        assert obs[:2].sum() == 1.0 and obs[2] == 0.0
        for t in range(5):  # the corridor: nothing to see, any action walks on
            obs, rew, term, trunc, info = env.step(1 - cue)
            assert rew == 0.0 and not term and "success" not in info
            assert obs[:2].sum() == 0.0 and obs[2] == float(t == 4)  # the junction shows at the last step
        right = seed % 2 == 0
        obs, rew, term, trunc, info = env.step(cue if right else 1 - cue)
        assert term and not trunc and rew == (1.0 if right else -1.0) and info["success"] == right


def test_repeat_previous_rules():
    env = RepeatPrevious(k=3, n_symbols=4, queries=5)
    obs, _ = env.reset(seed=0)
    seen, total, steps = [int(obs.argmax())], 0.0, 0
    while True:
        steps += 1
        answer = seen[-4] if len(seen) >= 4 else 0  # the symbol shown k=3 steps before this one
        obs, rew, term, _, info = env.step(answer)
        total += rew
        seen.append(int(obs.argmax()))
        if term:
            break
        assert rew == (0.0 if steps <= 3 else pytest.approx(0.2))
    assert steps == 8 and total == pytest.approx(1.0) and info["success"] and info["accuracy"] == 1.0
    env.reset(seed=0)
    for _ in range(8):
        _, _, term, _, info = env.step(0)
    assert term and info["accuracy"] < 1.0 and not info["success"]


@pytest.mark.parametrize("make,message", [
    (lambda: TMaze(0), "length must be an integer >= 1"),
    (lambda: gym.make("seqrl/TMaze-v0", length=2.5), "length must be an integer >= 1"),
    (lambda: RepeatPrevious(k=0), "k must be an integer >= 1"),
    (lambda: RepeatPrevious(n_symbols=1), "n_symbols must be an integer >= 2"),
])
def test_bad_kwargs_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


class CueOracle:
    """Remembers the cue of each env: the optimal TMaze policy, written by hand."""

    def initial_state(self, n, device):
        return torch.zeros(n, dtype=torch.long)

    def act(self, obs, cue):
        cue = torch.where(obs[:, :2].sum(1) > 0, obs[:, 1].long(), cue)
        return cue, cue

    def observe(self, cue, reward, done):
        return cue


def test_evaluate_reports_success_with_env_kwargs():
    tmaze = EnvPreset(name="tmaze", env_id="seqrl/TMaze-v0", max_episode_steps=20, env_kwargs={"length": 4})
    res = evaluate(CueOracle(), tmaze, 6, seed=0)
    s = res.summary()
    assert s["success_rate"] == 1.0 and s["return_mean"] == 1.0 and np.all(res.lengths == 5)
    cartpole = EnvPreset(name="cartpole", env_id="CartPole-v1", max_episode_steps=5)
    assert "success_rate" not in evaluate(CueOracle(), cartpole, 2).summary()
