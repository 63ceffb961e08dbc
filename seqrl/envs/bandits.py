"""Bandit task families for in-context RL, and the task bookkeeping every seqrl task family shares.

A task family is one Gymnasium env class whose task is a number. The task id fixes every task
parameter (arm means, features, theta; in `seqrl.envs.darkroom` the goal, key and door cells), always
through the same deterministic draw from the id, never from a reset seed: reset seeds drive only the
reward noise. Every family has a fixed, disjoint train/test split of task ids (`env.tasks("train")`,
`env.tasks("test")`). The task is a constructor argument (`task=3`) and a reset option
(`env.reset(options={"task": 3})` switches task without remaking the env, as vector envs need);
`info["task"]` carries it after every reset and step.

Bandits. An episode is `horizon` pulls, truncated (a time limit) after the last one; nothing
terminates. The observation is a constant: `Discrete(1)`, always 0 (a bandit has no state; DPT feeds a
constant state too). Actions `Discrete(arms)`. `info["regret"]` is the step's regret, the best arm's mean
minus the pulled arm's mean (0 for the best arm). `means` holds the arm means, `optimal_action()` the
best arm, for baselines and for DPT's labels.

GaussianBandit: reward N(mu_a, noise^2), mu ~ U[0, 1] per arm; defaults 5 arms, noise 0.3, horizon 500
    (Lee et al. 2023, "Supervised Pretraining Can Learn In-Context Reinforcement Learning", DPT).
BernoulliBandit: reward 1 with probability mu_a, else 0. Task k has the same means as GaussianBandit's
    task k (DPT draws Bernoulli means from Beta(1, 1) = U[0, 1], the same law), so the two differ only
    in the noise: the out-of-distribution test for a model trained on Gaussian arms.
LinearBandit: `arms` arms with features x_a in R^dim, reward x_a . theta + N(0, noise^2).
    protocol "dpt" (default; DPT's linear bandit, 10 arms, dim 2, noise 0.3, horizon 200): the features
    are drawn once, x_a ~ N(0, I/dim), and shared by every task; theta ~ N(0, I/dim) per task. Read from
    DPT's released code (the arms are drawn once from a fixed seed, theta per environment).
    protocol "lin2023" (Lin, Bai, Mei 2023, "Transformers as Decision Makers", dim 5, noise 1.5,
    horizon 200: `LinearBandit(dim=5, noise=1.5, protocol="lin2023")`): each task draws its own
    features, x_a ~ U[-1, 1]^dim, and theta ~ U[0, 1]^dim, as their released code does.

Splits: task ids 0 .. train_tasks-1 train, the next test_tasks ids test (defaults 100,000 and 200: DPT
pretrains on 100,000 bandits and evaluates on 200).
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

from seqrl.envs.checks import check_action, check_int

Split = Literal["train", "test"]

# One seed per family; a task's parameters come from default_rng([family seed, task id]).
_BANDIT_SEED = 0x5EED_0B01  # Gaussian and Bernoulli arms share it: task k has the same means in both
_LINEAR_SEED = 0x5EED_0B02
_LINEAR_FEATURES_SEED = 0x5EED_0B03  # DPT's shared features, drawn once per (arms, dim)


class TaskEnv(gym.Env):
    """A family of tasks numbered 0 .. n_tasks-1, split once into train and test ids.

    Subclasses call `_init_tasks(n_train, n_test, task)` at the end of `__init__` and implement
    `_set_task(task)` (derive the task's parameters from its id), `_start()` (begin an episode, return
    the first observation) and `_info()` (the step's info dict, with "task")."""

    metadata = {"render_modes": []}

    def _init_tasks(self, n_train: int, n_test: int, task: Any) -> None:
        self._n_train, self._n_test = n_train, n_test
        self.task = -1
        self._set_task(self._check_task(task))
        self._start()

    @property
    def n_tasks(self) -> int:
        return self._n_train + self._n_test

    def tasks(self, split: Split) -> list[int]:
        """The task ids of a split, "train" or "test"; fixed for the family and its configuration."""
        if split == "train":
            return list(range(self._n_train))
        if split == "test":
            return list(range(self._n_train, self.n_tasks))
        raise ValueError(f"{type(self).__name__} split must be 'train' or 'test', got {split!r}")

    def _check_task(self, task: Any) -> int:
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < self.n_tasks:
            raise ValueError(f"task {task!r} is not a task of {type(self).__name__}: its {self.n_tasks} tasks "
                             f"are the ids 0 to {self.n_tasks - 1}")
        return int(task)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            task = self._check_task(options["task"])
            if task != self.task:
                self._set_task(task)
        return self._start(), self._info()

    def _set_task(self, task: int) -> None:
        raise NotImplementedError

    def _start(self) -> Any:
        raise NotImplementedError

    def _info(self) -> dict[str, Any]:
        raise NotImplementedError


class _Bandit(TaskEnv):
    """Shared by the three bandits: spaces, the pull counter, arm checks, regret; `_pull(a)` draws a reward."""

    def __init__(self, arms: int, horizon: int, noise: float, task: int, train_tasks: int, test_tasks: int):
        name = type(self).__name__
        self.arms = check_int(name, "arms", arms, 2)
        self.horizon = check_int(name, "horizon", horizon, 1)
        if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
                or not 0.0 <= noise < np.inf:
            raise ValueError(f"{name} noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.observation_space = gym.spaces.Discrete(1)  # a constant: bandits have no state
        self.action_space = gym.spaces.Discrete(self.arms)
        self.means = np.zeros(self.arms)  # (K,) expected reward of each arm, set by _set_task
        self._t = 0
        self._regret = 0.0
        self._init_tasks(check_int(name, "train_tasks", train_tasks, 1), check_int(name, "test_tasks", test_tasks, 1),
                         task)

    def optimal_action(self) -> int:
        """The arm with the highest mean (the lowest index on a tie)."""
        return int(np.argmax(self.means))

    def _start(self) -> int:
        self._t = 0
        self._regret = 0.0
        return 0

    def _info(self) -> dict[str, Any]:
        return {"task": self.task, "regret": self._regret}

    def step(self, action):
        a = check_action(action, self.arms, f"{self.arms} arms of this bandit")
        reward = self._pull(a)
        self._t += 1
        self._regret = float(self._best - self.means[a])
        return 0, reward, False, self._t >= self.horizon, self._info()

    def _set_means(self, means: np.ndarray) -> None:
        self.means = means
        self._best = float(means.max())

    def _pull(self, a: int) -> float:
        raise NotImplementedError


class GaussianBandit(_Bandit):
    def __init__(self, arms: int = 5, horizon: int = 500, noise: float = 0.3, task: int = 0,
                 train_tasks: int = 100_000, test_tasks: int = 200):
        super().__init__(arms, horizon, noise, task, train_tasks, test_tasks)

    def _set_task(self, task: int) -> None:
        self.task = task
        self._set_means(np.random.default_rng([_BANDIT_SEED, task]).uniform(0.0, 1.0, self.arms))

    def _pull(self, a: int) -> float:
        return float(self.means[a] + self.noise * self.np_random.standard_normal())


class BernoulliBandit(_Bandit):
    def __init__(self, arms: int = 5, horizon: int = 500, task: int = 0, train_tasks: int = 100_000,
                 test_tasks: int = 200):
        super().__init__(arms, horizon, 0.0, task, train_tasks, test_tasks)

    def _set_task(self, task: int) -> None:
        self.task = task
        self._set_means(np.random.default_rng([_BANDIT_SEED, task]).uniform(0.0, 1.0, self.arms))

    def _pull(self, a: int) -> float:
        return float(self.np_random.random() < self.means[a])


class LinearBandit(_Bandit):
    def __init__(self, arms: int = 10, dim: int = 2, horizon: int = 200, noise: float = 0.3,
                 protocol: Literal["dpt", "lin2023"] = "dpt", task: int = 0, train_tasks: int = 100_000,
                 test_tasks: int = 200):
        if protocol not in ("dpt", "lin2023"):
            raise ValueError(f"LinearBandit protocol must be 'dpt' or 'lin2023', got {protocol!r}")
        arms, self.dim = check_int("LinearBandit", "arms", arms, 2), check_int("LinearBandit", "dim", dim, 1)
        self.protocol = protocol
        self.features = np.zeros((arms, self.dim))  # (K, d): x_a, one row per arm
        self.theta = np.zeros(self.dim)  # (d,)
        if protocol == "dpt":  # drawn once, shared by every task
            rng = np.random.default_rng([_LINEAR_FEATURES_SEED, arms, self.dim])
            self.features = rng.standard_normal((arms, self.dim)) / np.sqrt(self.dim)
        super().__init__(arms, horizon, noise, task, train_tasks, test_tasks)

    def _set_task(self, task: int) -> None:
        self.task = task
        rng = np.random.default_rng([_LINEAR_SEED, task])
        if self.protocol == "dpt":
            self.theta = rng.standard_normal(self.dim) / np.sqrt(self.dim)
        else:
            self.features = rng.uniform(-1.0, 1.0, (self.arms, self.dim))
            self.theta = rng.uniform(0.0, 1.0, self.dim)
        self._set_means(self.features @ self.theta)

    def _pull(self, a: int) -> float:
        return float(self.means[a] + self.noise * self.np_random.standard_normal())

    @property
    def theta_prior(self) -> tuple[float, float]:
        """(mean, variance) of each coordinate of theta as tasks draw it: N(0, 1/d) under "dpt"; under
        "lin2023" the mean and variance of U[0, 1] (linear Thompson sampling's Gaussian prior)."""
        return (0.0, 1.0 / self.dim) if self.protocol == "dpt" else (0.5, 1.0 / 12.0)
