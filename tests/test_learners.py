"""The classic learners of seqrl.data.learners on the in-context RL task families, and learning_histories.

Regrets and returns asserted here were measured (seed 0, the 200 test tasks; the report gives them):
5-arm Gaussian bandits, horizon 500: random 169.1, greedy 10.7, UCB (c=0.3) 11.0, Thompson 9.2, optimal 0
(DPT's figures: Thompson about 9.2, UCB about 10); linear bandits (DPT's, d=2, T=200): LinUCB 3.8 (DPT:
3.9), linear Thompson sampling 3.9, random 170."""

from functools import partial

import numpy as np
import pytest

from seqrl.data.learners import (UCB, BernoulliThompson, EmpiricalMean, GaussianThompson, LinearThompson, LinUCB,
                                 NoisyDemonstrator, Optimal, QLearning, Random, learning_histories)
from seqrl.data.store import ReplayStore
from seqrl.envs import BernoulliBandit, DarkRoom, GaussianBandit, KeyToDoor, LinearBandit

AD_ROOM = partial(DarkRoom, size=9, horizon=20, start="centre")


def regret(make_env, tasks, make_learner, seed=0):
    """Mean over tasks of the cumulative regret after one episode (the whole horizon)."""
    h = learning_histories(make_env, tasks, make_learner, 1, seed)
    return float(h.regret[:, 0].sum(-1).mean())


@pytest.fixture(scope="module")
def gaussian_regrets():
    tasks = GaussianBandit().tasks("test")
    learners = {"random": Random.from_envs, "greedy": EmpiricalMean.from_envs, "ucb": partial(UCB.from_envs, c=0.3),
                "ts": GaussianThompson.from_envs, "optimal": Optimal.from_envs}
    return {name: regret(GaussianBandit, tasks, make) for name, make in learners.items()}


def test_gaussian_bandit_regret_ordering(gaussian_regrets):
    r = gaussian_regrets
    assert r["optimal"] == 0.0
    assert 150 < r["random"] < 190  # (K-1)/K * E[max - mean] * 500 for U[0,1] means: about 167
    for name in ("ts", "ucb", "greedy"):
        assert r[name] < r["random"] / 8, name


def test_gaussian_bandit_regret_in_dpts_ballpark(gaussian_regrets):
    assert 7.5 < gaussian_regrets["ts"] < 11.5  # DPT: about 9.2
    assert 8.5 < gaussian_regrets["ucb"] < 13.0  # DPT: about 10


def test_bernoulli_thompson_beats_random():
    tasks = BernoulliBandit().tasks("test")[:100]
    ts = regret(partial(BernoulliBandit, horizon=200), tasks, BernoulliThompson.from_envs)
    rnd = regret(partial(BernoulliBandit, horizon=200), tasks, Random.from_envs)
    assert ts < rnd / 4


def test_linucb_on_linear_bandits():
    tasks = LinearBandit().tasks("test")
    lin = regret(LinearBandit, tasks, LinUCB.from_envs)
    rnd = regret(LinearBandit, tasks, Random.from_envs)
    assert lin < rnd / 20 and 2.5 < lin < 5.5  # DPT: LinUCB about 3.9
    per_task = partial(LinearBandit, dim=5, noise=1.5, protocol="lin2023")  # features drawn per task
    assert regret(per_task, tasks[:100], LinUCB.from_envs) < regret(per_task, tasks[:100], Random.from_envs) / 2


def test_linear_thompson_on_linear_bandits():
    env = LinearBandit()
    m, v = env.theta_prior
    ts = partial(LinearThompson.from_envs, noise=env.noise, prior_mean=m, prior_var=v)
    tasks = env.tasks("test")
    assert 2.5 < regret(LinearBandit, tasks, ts) < 5.5  # LinUCB 3.8 on the same tasks
    per_task = partial(LinearBandit, dim=5, noise=1.5, protocol="lin2023")
    m, v = per_task().theta_prior
    ts = partial(LinearThompson.from_envs, noise=1.5, prior_mean=m, prior_var=v)
    assert regret(per_task, tasks[:100], ts) < regret(per_task, tasks[:100], Random.from_envs) / 5


def test_linear_thompson_posterior_is_the_regularised_least_squares_fit():
    """The incremental posterior against one least-squares solve over the whole history (float64): the posterior
    mean minimises |X theta - r|^2 / sigma^2 + |theta - m0|^2 / v0, the covariance is the inverse Gram matrix."""
    h = learning_histories(partial(LinearBandit, dim=3, protocol="lin2023"), [0, 1, 2], Random.from_envs, 1, seed=3)
    envs = [LinearBandit(dim=3, protocol="lin2023", task=t) for t in (0, 1, 2)]
    sigma, m0, v0 = 0.3, 0.5, 1 / 12
    ts = LinearThompson.from_envs(envs, noise=sigma, prior_mean=m0, prior_var=v0)
    for t in range(40):
        ts.update(None, h.actions[:, 0, t], h.rewards[:, 0, t], None, None)
    mean, cov = ts.posterior()
    for i, env in enumerate(envs):
        X = env.features[h.actions[i, 0, :40]]  # (40, d)
        A = np.vstack([X / sigma, np.eye(3) / np.sqrt(v0)])
        b = np.concatenate([h.rewards[i, 0, :40].astype(np.float64) / sigma, np.full(3, m0 / np.sqrt(v0))])
        np.testing.assert_allclose(mean[i], np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(cov[i], np.linalg.inv(A.T @ A), rtol=1e-9, atol=1e-12)
    ts.update(None, np.array([0, 0, 0]), np.zeros(3), None, None, live=np.array([False, True, False]))
    np.testing.assert_array_equal(ts.posterior()[0][[0, 2]], mean[[0, 2]])  # rows that did not step keep theirs


def test_greedy_and_ucb_pull_every_arm_once_first():
    for make in (EmpiricalMean.from_envs, partial(UCB.from_envs, c=0.3)):
        h = learning_histories(partial(GaussianBandit, horizon=10), [3, 4, 5], make, 1, seed=1)
        assert np.all(np.sort(h.actions[:, 0, :5], axis=1) == np.arange(5))


def test_q_learning_reaches_near_optimal_return_on_ad_dark_room():
    room = AD_ROOM()
    tasks = room.tasks("train")[::2]  # 32 goals
    best = np.array([AD_ROOM(task=t).optimal_return() for t in tasks])
    h = learning_histories(AD_ROOM, tasks, QLearning.from_envs, 150, seed=0)
    R = h.returns()  # (n, E)
    assert R[:, :10].mean() < 0.3 * best.mean()  # it starts near random
    assert R[:, -10:].mean() > 0.9 * best.mean()
    assert np.all(R <= best[:, None])


def test_q_learning_needs_the_reward_memory_on_key_to_door():
    make = partial(KeyToDoor, size=5, horizon=20, start="corner")
    tasks = make().tasks("train")[:24]
    best = np.array([make(task=t).optimal_return() for t in tasks])
    h = learning_histories(make, tasks, partial(QLearning.from_envs, reward_memory=True), 100, seed=0)
    assert h.returns()[:, -10:].mean() > 0.9 * best.mean()  # measured: 1.96 of 2
    blind = learning_histories(make, tasks, QLearning.from_envs, 100, seed=0)  # cannot tell whether it holds the key
    assert blind.returns()[:, -10:].mean() < 0.75 * best.mean()  # measured: 1.13
    assert np.all(h.terminations.sum(-1) <= 1)  # the door ends an episode once at most
    done = h.terminations.any(-1)
    assert done.mean() > 0.5 and np.all(h.lengths[~done] == 20)
    assert np.all(h.terminations[done, h.lengths[done] - 1])  # at the episode's last step


@pytest.mark.parametrize("make", [AD_ROOM, KeyToDoor])
def test_demonstrator_improves_as_its_noise_decays(make):
    tasks = make().tasks("test")[:30]
    best = np.array([make(task=t).optimal_return() for t in tasks])
    h = learning_histories(make, tasks, partial(NoisyDemonstrator.from_envs, episodes=12), 12, seed=0)
    mean_return = h.returns().mean(0)  # (E,)
    assert mean_return[:3].mean() < 0.5 * best.mean() < mean_return[-3:].mean()
    assert np.corrcoef(np.arange(12), mean_return)[0, 1] > 0.8
    np.testing.assert_array_equal(h.returns()[:, -1], best)  # eps = 0 in the last episode: optimal


def test_histories_layout_and_determinism():
    make, tasks = partial(KeyToDoor, size=4, horizon=12), [0, 5, 9]
    learner = partial(QLearning.from_envs, reward_memory=True)
    h = learning_histories(make, tasks, learner, 6, seed=3)
    assert h.obs.shape == (3, 6, 13, 2) and h.actions.shape == h.rewards.shape == (3, 6, 12)
    assert h.regret is None and list(h.tasks) == tasks
    again = learning_histories(make, tasks, learner, 6, seed=3)
    other = learning_histories(make, tasks, learner, 6, seed=4)
    np.testing.assert_array_equal(h.actions, again.actions)
    assert not np.array_equal(h.actions, other.actions)
    for i, task in enumerate(tasks):  # replaying the actions in a fresh env gives the recorded episode
        env = make()
        for e in range(6):
            obs, _ = env.reset(options={"task": task})
            np.testing.assert_array_equal(obs, h.obs[i, e, 0])
            T = h.lengths[i, e]
            for t in range(T):
                obs, rew, term, trunc, _ = env.step(int(h.actions[i, e, t]))
                np.testing.assert_array_equal(obs, h.obs[i, e, t + 1])
                assert (rew, term, trunc) == (h.rewards[i, e, t], h.terminations[i, e, t], h.truncations[i, e, t])
            assert term or trunc
    store = ReplayStore.from_episodes(h.episodes(stream_start=10), make().observation_space, make().action_space)
    assert store.num_episodes == 18 and len(store) == h.lengths.sum()
    assert store.stream.tolist() == [10] * 6 + [11] * 6 + [12] * 6  # one stream per history, in order
    np.testing.assert_allclose(store.episode_returns, h.returns().ravel())


def test_bad_arguments():
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        learning_histories(GaussianBandit, [0], Random.from_envs, 0)
    with pytest.raises(ValueError, match="task 300 is not a task of GaussianBandit"):
        learning_histories(partial(GaussianBandit, test_tasks=5, train_tasks=5), [300], Random.from_envs, 1)
