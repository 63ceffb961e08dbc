"""In-context RL datasets: `seqrl collect --env FAMILY --quality KIND` for the task families of
`seqrl.envs.bandits` and `seqrl.envs.darkroom`, written as Minari datasets through `write_dataset`.

Dimension letters: n tasks, H steps of a context or an episode, S states, E episodes.

Families (`--env`): gaussian-bandit, bernoulli-bandit, linear-bandit, darkroom, keytodoor (or their
Gymnasium ids). Kinds (`--quality`):

    dpt          DPT's pretraining data (Lee et al. 2023): per training task one episode of H steps from a
                 random policy. Bandits: a policy that mixes Dirichlet(1) arm weights with a point mass on a
                 uniformly drawn arm (the paper's recipe; the mixing weight's law, uniform in [0, 1), is ours:
                 contexts from near-uniform to near-greedy). Grids: uniformly random moves from the start cell
                 (`dpt_start="uniform"`: from a uniformly random cell, DPT's state distribution).
    ad-ucb, ad-thompson     AD's learning histories (Laskin et al. 2022) on bandits: UCB1 (c = the noise's
                 std), Gaussian Thompson sampling (Gaussian bandit) or Beta-Bernoulli (Bernoulli bandit);
                 LinUCB for the linear bandit is `ad-linucb`.
    ad-q         tabular Q-learning histories on the grids (reward memory on Key-to-Door).
    ad-noisy     AD-epsilon (Zisman et al. 2024): the optimal policy with a noise falling from 1 to 0.

Where things live in a Minari episode (chosen so that they round-trip through `write_dataset` and
`load_store` unchanged): each episode's stream is its task id (one learning history or one DPT context
per task), and its meta is {"task": id, "episode": e, "optimal": [a*(s) for s in 0..S-1]}: the task's
optimal action in every state, in the order `state_index` numbers them (bandits: one state; grids:
row-major cells). DPT's labels are read from that table at the query's state, so any step of the
store can be a query. Key-to-Door has no such table (the optimal action depends on whether the key is
held, which the observation does not show): DPT data is refused there.

The dataset's recipe (its metadata, `dataset_recipe`) records the kind, the env id and constructor
kwargs, and the training task ids as [lo, hi) ranges, so that in-context evaluation can check that the
test tasks were never trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import seqrl.envs  # noqa: F401  registers the families
from seqrl.data import learners as L
from seqrl.data.minari_io import dataset_exists, dataset_path, reuse_dataset, write_dataset
from seqrl.errors import DataError, PresetError
from seqrl.presets import build

FAMILIES = {
    "gaussian-bandit": "seqrl/GaussianBandit-v0",
    "bernoulli-bandit": "seqrl/BernoulliBandit-v0",
    "linear-bandit": "seqrl/LinearBandit-v0",
    "darkroom": "seqrl/DarkRoom-v0",
    "keytodoor": "seqrl/KeyToDoor-v0",
}
BANDITS = ("gaussian-bandit", "bernoulli-bandit", "linear-bandit")
KINDS = {"gaussian-bandit": ("dpt", "ad-ucb", "ad-thompson"), "bernoulli-bandit": ("dpt", "ad-ucb", "ad-thompson"),
         "linear-bandit": ("dpt", "ad-linucb"), "darkroom": ("dpt", "ad-q", "ad-noisy"),
         "keytodoor": ("ad-q", "ad-noisy")}


@dataclass(frozen=True)
class ICRLCollectConfig:
    """Sizes of an in-context dataset (`--set key=value`)."""

    tasks: int = 1000
    """training tasks used: the first `tasks` ids of the family's train split"""
    episodes: int = 1
    """AD: episodes of each learning history (bandits: 1 episode = the whole horizon); DPT: contexts per task"""
    seed: int = 0
    """seeds the envs' reward noise and the behaviour policies"""
    chunk: int = 1000
    """tasks run together (memory)"""
    dpt_start: str = "start"
    """grids, DPT's contexts: "start", random walks from the env's start cell; "uniform", random walks each
    from a uniformly random cell (a random walk that stays put at walls keeps the uniform distribution, so
    every step's state is uniform, as DPT's random transitions; worse at the CPU size, docs/icrl.md)"""
    ucb_c: float = -1.0
    """UCB's bonus scale; < 0: the bandit's noise std (0.5 for Bernoulli arms)"""
    q_lr: float = 0.5
    """Q-learning step size"""
    q_gamma: float = 0.9
    """Q-learning discount"""
    q_eps_decay: float = 0.95
    """Q-learning: epsilon = eps_decay ** episode"""
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """the family's constructor kwargs (e.g. horizon, size); the test split follows from them"""

    def __post_init__(self):
        for name in ("tasks", "episodes", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dpt_start not in ("uniform", "start"):
            raise ValueError(f"dpt_start must be 'uniform' or 'start', got {self.dpt_start!r}")


def family_of(env: str) -> str:
    """A family name from a name or a Gymnasium id; PresetError for anything else."""
    if env in FAMILIES:
        return env
    for name, env_id in FAMILIES.items():
        if env == env_id:
            return name
    raise PresetError(f"unknown in-context env {env!r}; known: {sorted(FAMILIES)} (or their ids)")


def is_icrl_env(env: str) -> bool:
    return env in FAMILIES or env in FAMILIES.values()


def dataset_id(family: str, kind: str) -> str:
    return f"seqrl/{family}/{kind}-v0"


def make_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    """The family's env, unwrapped (no time limit wrapper: the families truncate themselves)."""
    return gym.make(env_id, disable_env_checker=True, **env_kwargs).unwrapped


def state_index(obs: np.ndarray, space: gym.Space) -> np.ndarray:
    """(n, *obs_shape) observations -> (n,) state numbers: Discrete values, MultiDiscrete row-major cells."""
    if isinstance(space, gym.spaces.Discrete):
        return np.asarray(obs, np.int64).reshape(-1) - int(space.start)
    if isinstance(space, gym.spaces.MultiDiscrete):
        o = np.asarray(obs, np.int64).reshape(-1, space.nvec.size)
        return np.ravel_multi_index(o.T, space.nvec.reshape(-1))
    raise DataError(f"observation space {space}: in-context labels need Discrete or MultiDiscrete states")


def optimal_table(env: gym.Env) -> list[int]:
    """The current task's optimal action in every state (bandits: [a*]; Dark Room: per cell, row-major)."""
    if hasattr(env, "means"):
        return [int(env.optimal_action())]
    if hasattr(env, "goal"):
        size = env.size
        return [int(env.optimal_action(np.array(divmod(s, size)))) for s in range(size * size)]
    raise DataError(f"{type(env).__name__}: no optimal action per state (Key-to-Door's depends on the hidden key); "
                    f"DPT datasets need one")


def ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted unique ids as [lo, hi) ranges (compact in the recipe)."""
    ids = np.unique(np.asarray(ids, np.int64))
    if ids.size == 0:
        return []
    cut = np.flatnonzero(np.diff(ids) != 1) + 1
    return [[int(g[0]), int(g[-1]) + 1] for g in np.split(ids, cut)]


def in_ranges(ids: Any, rngs: list[list[int]]) -> np.ndarray:
    """(len(ids),) bool: which ids fall in the [lo, hi) ranges."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    hit = np.zeros(ids.shape, bool)
    for lo, hi in rngs:
        hit |= (ids >= lo) & (ids < hi)
    return hit


def _learner(family: str, kind: str, cfg: ICRLCollectConfig, env: gym.Env):
    noise = getattr(env, "noise", 0.5) or 0.5
    if kind == "ad-ucb":
        return functools.partial(L.UCB.from_envs, c=noise if cfg.ucb_c < 0 else cfg.ucb_c)
    if kind == "ad-thompson":
        if family == "bernoulli-bandit":
            return L.BernoulliThompson.from_envs
        return functools.partial(L.GaussianThompson.from_envs, noise=noise)
    if kind == "ad-linucb":
        return L.LinUCB.from_envs
    if kind == "ad-q":
        return functools.partial(L.QLearning.from_envs, lr=cfg.q_lr, gamma=cfg.q_gamma, eps_decay=cfg.q_eps_decay,
                                 reward_memory=family == "keytodoor")
    if kind == "ad-noisy":
        return functools.partial(L.NoisyDemonstrator.from_envs, episodes=cfg.episodes)
    raise PresetError(f"unknown kind {kind!r}")


def dpt_bandit_policy(n: int, arms: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K) action probabilities: Dirichlet(1) weights mixed with a point mass on a random arm (DPT)."""
    p = rng.dirichlet(np.ones(arms), size=n)  # (n, K)
    point = np.eye(arms)[rng.integers(arms, size=n)]  # (n, K)
    w = rng.random((n, 1))  # mixing weight in [0, 1)
    return (1 - w) * p + w * point


class _FixedPolicy:
    """A learner-shaped random policy: bandits draw from per-row probabilities, grids uniformly."""

    def __init__(self, n: int, probs: np.ndarray):
        self.n, self.probs = n, probs  # (n, A)

    def act(self, obs, rng: np.random.Generator) -> np.ndarray:
        c = self.probs.cumsum(1)
        return np.minimum((rng.random((self.n, 1)) > c).sum(1), self.probs.shape[1] - 1).astype(np.int64)

    def update(self, *a, **k) -> None:
        pass

    def reset_episode(self) -> None:
        pass


def random_context_policy(family: str, envs: list[gym.Env], rng: np.random.Generator) -> _FixedPolicy:
    """DPT's context policy for these envs: the Dirichlet mixture on bandits, uniform moves on grids."""
    A = int(envs[0].action_space.n)
    if family in BANDITS:
        return _FixedPolicy(len(envs), dpt_bandit_policy(len(envs), A, rng))
    return _FixedPolicy(len(envs), np.full((len(envs), A), 1.0 / A))


def _episodes(family: str, kind: str, cfg: ICRLCollectConfig, env_id: str, tasks: np.ndarray) -> list[dict]:
    probe = make_env(env_id, cfg.env_kwargs)
    mk = functools.partial(make_env, env_id, cfg.env_kwargs)
    out = []
    for c0 in range(0, len(tasks), cfg.chunk):
        chunk = tasks[c0 : c0 + cfg.chunk]
        seed = cfg.seed * 1_000_003 + c0
        start = None
        if kind == "dpt":
            policy_rng = np.random.default_rng([cfg.seed, c0, 7])
            make = functools.partial(random_context_policy, family, rng=policy_rng)
            start = "uniform" if cfg.dpt_start == "uniform" and family not in BANDITS else None
        else:
            make = _learner(family, kind, cfg, probe)
        h = L.learning_histories(mk, chunk, make, cfg.episodes, seed, start)
        eps = h.episodes(0)
        tables = {}
        if kind == "dpt" or family != "keytodoor":
            env = mk()
            for t in chunk.tolist():
                env.reset(options={"task": int(t)})
                tables[t] = optimal_table(env)
        for ep in eps:
            t = ep["meta"]["task"]
            ep["stream"] = t  # the task id: one history / context per task
            if t in tables:
                ep["meta"]["optimal"] = tables[t]
        out += eps
    return out


def recipe(family: str, kind: str, cfg: ICRLCollectConfig, env_id: str, tasks: np.ndarray) -> dict[str, Any]:
    return {"icrl": kind, "family": family, "env_id": env_id, "env_kwargs": dict(cfg.env_kwargs),
            "train_tasks": ranges(tasks), "config": dataclasses.asdict(cfg)}


def collect_icrl(env: str, kind: str, overrides: dict[str, Any] | None = None, rebuild: bool = False) -> Path:
    """Build (or reuse, when its recipe matches) the dataset `seqrl/FAMILY/KIND-v0`. See the module doc."""
    family = family_of(env)
    if kind not in KINDS[family]:
        raise PresetError(f"unknown quality {kind!r} for in-context env {family!r}; one of {list(KINDS[family])}")
    cfg = build(ICRLCollectConfig, dict(overrides or {}))
    env_id = FAMILIES[family]
    try:
        probe = make_env(env_id, cfg.env_kwargs)
    except (TypeError, ValueError) as e:
        raise PresetError(f"env_kwargs {cfg.env_kwargs} for {env_id}: {e}") from e
    train = probe.tasks("train")
    if cfg.tasks > len(train):
        raise PresetError(f"tasks={cfg.tasks}: {family} has {len(train)} training tasks with {cfg.env_kwargs}")
    tasks = np.asarray(train[: cfg.tasks], np.int64)
    did, want = dataset_id(family, kind), recipe(family, kind, cfg, env_id, tasks)
    if reuse_dataset(did, want, rebuild):
        return dataset_path(did)
    eps = _episodes(family, kind, cfg, env_id, tasks)
    algo = {"dpt": "random-context"}.get(kind, kind)
    desc = f"in-context RL {kind} data: {cfg.tasks} training tasks of {env_id} {cfg.env_kwargs}"
    if probe.observation_space != gym.make(env_id).observation_space or \
            probe.action_space != gym.make(env_id).action_space:
        warnings.warn(f"{env_id} with {cfg.env_kwargs} has other spaces than its default: Minari records the "
                      f"default's action space", stacklevel=2)
    return write_dataset(did, eps, env_id, 0.0, 1.0, algo, desc, observation_space=probe.observation_space,
                         recipe=want, replace=dataset_exists(did))
