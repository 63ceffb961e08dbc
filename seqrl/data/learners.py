"""Classic learners for the in-context RL task families (`seqrl.envs.bandits`, `seqrl.envs.darkroom`): the
source algorithms whose learning histories Algorithm Distillation imitates, and the same-run baselines of
in-context evaluation. Each is vectorised in numpy over n parallel tasks, one row per task.

Dimension letters: n tasks (rows), K arms, d features, S states, A actions, E episodes, T steps.

Every learner has the same small interface:

    act(obs, rng) -> actions (n,) int64          obs: the n envs' observations stacked
    update(obs, actions, rewards, next_obs, terminated, live=None)
                                                 one step of every row; `live` (n,) bool marks the rows
                                                 whose env took this step (None: all); the others are
                                                 left untouched (an episode that ended early)
    reset_episode()                              called before every episode, the first included
    from_envs(envs, **hyperparameters)           a learner for these envs, one row each (classmethod)

Bandits (observations ignored; statistics kept across episodes, since the task stays the same):
    Random; EmpiricalMean (greedy on sample means, each arm pulled once first); UCB (UCB1 with a scale
    c: mean + c sqrt(2 ln t / N_a), each arm once first; c = the noise's standard deviation is UCB1 for
    sub-Gaussian rewards); GaussianThompson (Gaussian prior, known noise; DPT's baseline: prior N(0.5,
    1/12), the mean and variance of U[0, 1]); BernoulliThompson (Beta(1, 1) priors); LinUCB (ridge
    regression, lambda, and a bonus alpha ||x||_{A^-1}; Li et al. 2010); LinearThompson (a Gaussian prior
    on the linear bandit's theta, known noise: the exact posterior, one draw per pull); Optimal (knows the
    means).
Grids:
    QLearning: tabular, epsilon-greedy with epsilon decaying per episode (random tie-breaking among the
        greedy actions); `reward_memory` adds "a reward came earlier in this episode" to the state, which
        Key-to-Door needs since its observation does not show the key (its first reward is the key).
    NoisyDemonstrator: the noise curriculum of Zisman et al. 2024 ("Emergence of In-Context Reinforcement
        Learning from Noise Distillation", AD-epsilon): the optimal action with probability 1 - eps, a
        uniformly random one with probability eps, eps falling linearly from 1 in the first episode to 0
        in the last (constant within an episode).

`learning_histories(make_env, tasks, make_learner, episodes, seed)` runs one learner on a batch of tasks
and returns the histories as arrays (`Histories`): what `seqrl collect` will store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np


# ------------------------------------------------------------------------------------------ bandits
class _ArmLearner:
    """Per-row pull counts and reward sums over K arms; subclasses choose arms from them."""

    def __init__(self, n: int, arms: int):
        self.n, self.arms = int(n), int(arms)
        self.counts = np.zeros((self.n, self.arms))  # (n, K) pulls of each arm
        self.sums = np.zeros((self.n, self.arms))  # (n, K) total reward of each arm
        self._rows = np.arange(self.n)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], **kw: Any) -> "_ArmLearner":
        return cls(len(envs), int(envs[0].action_space.n), **kw)

    def update(self, obs, actions, rewards, next_obs, terminated, live=None) -> None:
        rows = self._rows if live is None else self._rows[live]
        a = np.asarray(actions)[rows]
        self.counts[rows, a] += 1
        self.sums[rows, a] += np.asarray(rewards, dtype=np.float64)[rows]

    def reset_episode(self) -> None:
        pass

    def _unpulled_first(self, choice: np.ndarray) -> np.ndarray:
        """choice (n,), replaced by the lowest-numbered unpulled arm where a row has one."""
        first = np.argmin(self.counts, axis=1)
        return np.where(self.counts[self._rows, first] == 0, first, choice).astype(np.int64)

    def _means(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)


class Random(_ArmLearner):
    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.arms, size=self.n)


class EmpiricalMean(_ArmLearner):
    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        return self._unpulled_first(np.argmax(self._means(), axis=1))


class UCB(_ArmLearner):
    def __init__(self, n: int, arms: int, c: float = 1.0):
        super().__init__(n, arms)
        self.c = float(c)  # bonus scale: 1 is UCB1 (rewards in [0, 1]); the noise's std for sub-Gaussian arms

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        t = self.counts.sum(1, keepdims=True)  # (n, 1) pulls so far
        bonus = self.c * np.sqrt(2.0 * np.log(np.maximum(t, 1.0)) / np.maximum(self.counts, 1))
        return self._unpulled_first(np.argmax(self._means() + bonus, axis=1))


class GaussianThompson(_ArmLearner):
    def __init__(self, n: int, arms: int, noise: float = 0.3, prior_mean: float = 0.5, prior_var: float = 1 / 12):
        super().__init__(n, arms)
        self.noise, self.prior_mean, self.prior_var = float(noise), float(prior_mean), float(prior_var)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        precision = 1.0 / self.prior_var + self.counts / self.noise**2  # (n, K) posterior precision
        mean = (self.prior_mean / self.prior_var + self.sums / self.noise**2) / precision
        return np.argmax(mean + rng.standard_normal(mean.shape) / np.sqrt(precision), axis=1)


class BernoulliThompson(_ArmLearner):
    def __init__(self, n: int, arms: int, prior_a: float = 1.0, prior_b: float = 1.0):
        super().__init__(n, arms)
        self.prior_a, self.prior_b = float(prior_a), float(prior_b)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        draws = rng.beta(self.prior_a + self.sums, self.prior_b + self.counts - self.sums)  # (n, K)
        return np.argmax(draws, axis=1)


class _LinearGaussian:
    """Per-row Gaussian linear regression on the pulled arms' features, the statistics LinUCB and linear Thompson
    sampling share: precision A = A0 + sum x x^T / s and b = b0 + sum r x / s, where s is the reward noise's
    variance (1: LinUCB's ridge form); the estimate of theta is A^-1 b. features (K, d), shared by every row,
    or (n, K, d)."""

    def __init__(self, n: int, features: np.ndarray, prior_precision: float, prior_b: float, s: float):
        features = np.asarray(features, dtype=np.float64)
        self.n = int(n)
        self.features = np.broadcast_to(features, (self.n, *features.shape[-2:]))  # (n, K, d)
        d = self.features.shape[-1]
        self.A = np.broadcast_to(float(prior_precision) * np.eye(d), (self.n, d, d)).copy()  # (n, d, d)
        self.b = np.full((self.n, d), float(prior_b))  # (n, d)
        self.s = float(s)
        self._rows = np.arange(self.n)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], **kw: Any) -> "_LinearGaussian":
        return cls(len(envs), np.stack([e.unwrapped.features for e in envs]), **kw)

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean A^-1 b (n, d), A^-1 (n, d, d)): theta's posterior mean and covariance (Thompson sampling)."""
        cov = np.linalg.inv(self.A)
        return np.einsum("nij,nj->ni", cov, self.b), cov

    def update(self, obs, actions, rewards, next_obs, terminated, live=None) -> None:
        rows = self._rows if live is None else self._rows[live]
        x = self.features[rows, np.asarray(actions)[rows]]  # (m, d)
        self.A[rows] += x[:, :, None] * x[:, None, :] / self.s
        self.b[rows] += np.asarray(rewards, dtype=np.float64)[rows, None] * x / self.s

    def reset_episode(self) -> None:
        pass


class LinUCB(_LinearGaussian):
    """LinUCB (Li et al. 2010): ridge estimate theta = A^-1 b with A = lam I + sum x x^T, b = sum r x; pull
    argmax_a x_a . theta + alpha sqrt(x_a^T A^-1 x_a)."""

    def __init__(self, n: int, features: np.ndarray, alpha: float = 1.0, lam: float = 1.0):
        super().__init__(n, features, prior_precision=lam, prior_b=0.0, s=1.0)
        self.alpha = float(alpha)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        theta, A_inv = self.posterior()  # (n, d), (n, d, d)
        width = np.einsum("nkd,nde,nke->nk", self.features, A_inv, self.features)  # (n, K) x^T A^-1 x
        ucb = np.einsum("nkd,nd->nk", self.features, theta) + self.alpha * np.sqrt(np.maximum(width, 0.0))
        return np.argmax(ucb, axis=1)


class LinearThompson(_LinearGaussian):
    """Thompson sampling for linear bandits with a Gaussian prior theta ~ N(m0 1, v0 I) and known noise sigma:
    the posterior is N(mu, P^-1), P = I / v0 + sum x x^T / sigma^2, mu = P^-1 (m0 1 / v0 + sum r x / sigma^2);
    each pull draws theta from it and takes argmax_a x_a . theta."""

    def __init__(self, n: int, features: np.ndarray, noise: float = 0.3, prior_mean: float = 0.0,
                 prior_var: float = 1.0):
        super().__init__(n, features, prior_precision=1.0 / float(prior_var),
                         prior_b=float(prior_mean) / float(prior_var), s=float(noise) ** 2)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        mean, cov = self.posterior()
        L_ = np.linalg.cholesky(cov)  # (n, d, d)
        theta = mean + np.einsum("nij,nj->ni", L_, rng.standard_normal(mean.shape))
        return np.argmax(np.einsum("nkd,nd->nk", self.features, theta), axis=1)


class Optimal(_ArmLearner):
    """Pulls the best arm of each row every time (it is given the means): zero regret."""

    def __init__(self, n: int, arms: int, means: np.ndarray):
        super().__init__(n, arms)
        self.best = np.argmax(np.asarray(means).reshape(self.n, self.arms), axis=1)  # (n,)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], **kw: Any) -> "Optimal":
        means = np.stack([e.unwrapped.means for e in envs])
        return cls(len(envs), means.shape[1], means, **kw)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        return self.best.copy()


# ------------------------------------------------------------------------------------------ grids
class QLearning:
    """Tabular Q-learning over the cells of a MultiDiscrete observation, one table per row."""

    def __init__(self, n: int, nvec: Sequence[int], actions: int = 5, lr: float = 0.5, gamma: float = 0.9,
                 eps_start: float = 1.0, eps_decay: float = 0.95, eps_min: float = 0.0, reward_memory: bool = False):
        self.n, self.actions = int(n), int(actions)
        self.nvec = tuple(int(v) for v in nvec)
        self.cells = int(np.prod(self.nvec))
        self.reward_memory = bool(reward_memory)
        self.q = np.zeros((self.n, self.cells * (2 if reward_memory else 1), self.actions))  # (n, S, A)
        self.lr, self.gamma = float(lr), float(gamma)
        self.eps_start, self.eps_decay, self.eps_min = float(eps_start), float(eps_decay), float(eps_min)
        self.episode = -1  # reset_episode() starts episode 0
        self.rewarded = np.zeros(self.n, bool)  # (n,) a reward came earlier in this episode
        self._rows = np.arange(self.n)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], **kw: Any) -> "QLearning":
        return cls(len(envs), envs[0].observation_space.nvec, int(envs[0].action_space.n), **kw)

    @property
    def epsilon(self) -> float:
        return max(self.eps_min, self.eps_start * self.eps_decay ** max(self.episode, 0))

    def _state(self, obs: np.ndarray, rewarded: np.ndarray) -> np.ndarray:
        s = np.ravel_multi_index(np.asarray(obs).reshape(self.n, -1).T, self.nvec)  # (n,)
        return s + self.cells * rewarded if self.reward_memory else s

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        q = self.q[self._rows, self._state(obs, self.rewarded)]  # (n, A)
        greedy = np.argmax((q == q.max(1, keepdims=True)) * rng.random(q.shape), axis=1)  # random among ties
        explore = rng.random(self.n) < self.epsilon
        return np.where(explore, rng.integers(self.actions, size=self.n), greedy)

    def update(self, obs, actions, rewards, next_obs, terminated, live=None) -> None:
        rows = self._rows if live is None else self._rows[live]
        rewards = np.asarray(rewards, dtype=np.float64)
        s = self._state(obs, self.rewarded)[rows]
        self.rewarded[rows] |= rewards[rows] != 0
        s2 = self._state(next_obs, self.rewarded)[rows]
        a = np.asarray(actions)[rows]
        bootstrap = np.where(np.asarray(terminated)[rows], 0.0, self.q[rows, s2].max(1))
        target = rewards[rows] + self.gamma * bootstrap
        self.q[rows, s, a] += self.lr * (target - self.q[rows, s, a])

    def reset_episode(self) -> None:
        self.episode += 1
        self.rewarded[:] = False


class NoisyDemonstrator:
    """AD-epsilon's demonstrator: `optimal(obs)` -> (n,) optimal actions, taken with probability 1 - eps."""

    def __init__(self, n: int, optimal: Callable[[np.ndarray], np.ndarray], actions: int, episodes: int):
        self.n, self.actions, self.episodes = int(n), int(actions), int(episodes)
        self.optimal = optimal
        self.episode = -1  # reset_episode() starts episode 0

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], episodes: int) -> "NoisyDemonstrator":
        raw = [e.unwrapped for e in envs]

        def optimal(obs: np.ndarray) -> np.ndarray:  # each env's shortest-path action from its own state
            return np.array([e.optimal_action(o) for e, o in zip(raw, obs)], dtype=np.int64)

        return cls(len(envs), optimal, int(envs[0].action_space.n), episodes)

    @property
    def epsilon(self) -> float:
        """1 in the first episode, 0 in the last, linear in between."""
        return max(0.0, 1.0 - max(self.episode, 0) / max(self.episodes - 1, 1))

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        noisy = rng.random(self.n) < self.epsilon
        return np.where(noisy, rng.integers(self.actions, size=self.n), self.optimal(obs))

    def update(self, obs, actions, rewards, next_obs, terminated, live=None) -> None:
        pass

    def reset_episode(self) -> None:
        self.episode += 1


# ------------------------------------------------------------------------------------------ histories
@dataclass(frozen=True)
class Histories:
    """Learning histories of n tasks over E episodes of at most T steps, padded after each episode's end.
    Row i is task `tasks[i]`; episode e of row i has `lengths[i, e]` steps."""

    tasks: np.ndarray  # (n,) int64 task ids
    obs: np.ndarray  # (n, E, T+1, *obs_shape) observations, the final one of each episode included
    actions: np.ndarray  # (n, E, T) int64
    rewards: np.ndarray  # (n, E, T) float32
    terminations: np.ndarray  # (n, E, T) bool
    truncations: np.ndarray  # (n, E, T) bool
    lengths: np.ndarray  # (n, E) int64 steps of each episode
    regret: np.ndarray | None  # (n, E, T) float64 info["regret"] where the env reports it (bandits), else None

    def returns(self) -> np.ndarray:
        """(n, E) undiscounted return of every episode."""
        return self.rewards.sum(-1, dtype=np.float64)

    def episodes(self, stream_start: int = 0) -> list[dict[str, Any]]:
        """Episodes in order, as `ReplayStore.extend` takes them: row i is stream `stream_start + i` (one
        learning history), meta {"task": id, "episode": e}."""
        out = []
        for i, task in enumerate(self.tasks):
            for e, T in enumerate(self.lengths[i]):
                out.append({"obs": self.obs[i, e, : T + 1], "act": self.actions[i, e, :T],
                            "rew": self.rewards[i, e, :T], "term": self.terminations[i, e, :T],
                            "trunc": self.truncations[i, e, :T], "stream": stream_start + i,
                            "meta": {"task": int(task), "episode": e}})
        return out


def learning_histories(make_env: Callable[[], gym.Env], tasks: Sequence[int],
                       make_learner: Callable[[list[gym.Env]], Any], episodes: int, seed: int = 0,
                       start: Any = None) -> Histories:
    """Run a learner on `tasks` (one env and one learner row each) for `episodes` episodes; return the
    histories. Pure: the envs (`make_env()`, one per task) and the learner (`make_learner(envs)`, e.g.
    `functools.partial(UCB.from_envs, c=0.3)`) are made here, and the result depends only on the
    arguments. Each env is reset to its task with a seed drawn from `seed` before its first episode; the
    learner's randomness comes from `seed` too. Envs must have a `horizon` (the longest episode). `start`,
    if given, is every reset's `start` option (the grids: "uniform" starts each episode at a random cell)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    tasks = np.asarray(tasks, dtype=np.int64).reshape(-1)
    n = len(tasks)
    if n == 0:
        raise ValueError("no tasks given")
    envs = [make_env() for _ in range(n)]
    T = int(envs[0].unwrapped.horizon)
    env_seq, learner_seq = np.random.SeedSequence(seed).spawn(2)
    env_seeds = env_seq.generate_state(n)
    rng = np.random.default_rng(learner_seq)
    opts = lambda t: {"task": int(t)} | ({} if start is None else {"start": start})  # noqa: E731
    first = [env.reset(seed=int(s), options=opts(t)) for env, s, t in zip(envs, env_seeds, tasks)]
    learner = make_learner(envs)  # after the resets: oracles read the tasks' parameters from the envs
    obs0 = np.asarray(first[0][0])
    obs = np.zeros((n, episodes, T + 1, *obs0.shape), dtype=obs0.dtype)
    actions = np.zeros((n, episodes, T), np.int64)
    rewards = np.zeros((n, episodes, T), np.float32)
    term = np.zeros((n, episodes, T), bool)
    trunc = np.zeros((n, episodes, T), bool)
    lengths = np.zeros((n, episodes), np.int64)
    regret = np.zeros((n, episodes, T)) if "regret" in first[0][1] else None

    for e in range(episodes):
        if e > 0:
            first = [env.reset(options=opts(t)) for env, t in zip(envs, tasks)]
        learner.reset_episode()
        o = np.stack([np.asarray(f[0]) for f in first])  # (n, *obs_shape)
        obs[:, e, 0] = o
        live = np.ones(n, bool)
        for t in range(T):
            a = np.asarray(learner.act(o, rng), dtype=np.int64)  # (n,)
            rows, a_list = np.flatnonzero(live), a.tolist()
            out = [envs[i].step(a_list[i]) for i in rows.tolist()]  # (obs, reward, term, trunc, info) each
            o2, r = o.copy(), np.zeros(n)
            te, tr = np.zeros(n, bool), np.zeros(n, bool)
            o2[rows] = np.stack([np.asarray(x[0]) for x in out])
            r[rows], te[rows], tr[rows] = [x[1] for x in out], [x[2] for x in out], [x[3] for x in out]
            if regret is not None:
                regret[rows, e, t] = [x[4]["regret"] for x in out]
            if t == T - 1:
                tr |= live & ~te  # the horizon: no episode runs longer
            actions[live, e, t], rewards[live, e, t] = a[live], r[live]
            term[live, e, t], trunc[live, e, t] = te[live], tr[live]
            obs[live, e, t + 1] = o2[live]
            lengths[live, e] += 1
            learner.update(o, a, r, o2, te, live)
            live &= ~(te | tr)
            o = o2
            if not live.any():
                break
    return Histories(tasks, obs, actions, rewards, term, trunc, lengths, regret)
