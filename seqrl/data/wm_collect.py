"""Scripted datasets for the image world-model tasks (seqrl/envs/image_memory.py, seqrl/envs/gridworlds.py), written
as Minari datasets by one builder, `build_wm_dataset(task, ...)`; uint8 frames stay uint8 in the file and in the
store. A dataset of the same id and recipe (env arguments, n_steps, seed, policy) is reused.

The tasks (`TASKS`; `seqrl collect --env NAME --quality Q`, NAME or the env id):

- distracting-memory (quality random): uniformly random actions. In the hallway they do nothing; at the doors
  the choice is uniform, so half the episodes pay +1 and half -1, whatever the cue: the reward of the last step
  can only be predicted by remembering the cue. Episodes run in 4 vector envs; all are one stream, so
  `sequences` may run across episode boundaries (world models see `first` flags there).
- four-rooms (quality explore): `GridExplorer` walks to a target cell drawn uniformly among the cells it can
  reach, along a shortest path, then draws the next; 10% of its moves are uniformly random. About three targets
  in four lie in another room, so it crosses doorways often and comes back to rooms it saw long before.
- multi-doors-keys (quality explore): the same walker; when it draws a new target, with probability 0.25 that
  is a task target instead (a key still on the map, or the door of a key it holds: it walks into the door),
  chosen uniformly among them. At 7 keys and 600 steps, each of the 10 episodes of seed 0 has all 14
  rewards (every key picked up, every door opened), the last at steps 279-520: rewards are spread through
  the episode, and opened closets are visited.

The walkers read the env's map (they are data collectors, not agents); the env and the walker
are both seeded from the collect seed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from seqrl.data.collect import random_policy, rollout
from seqrl.data.minari_io import dataset_exists, reuse_dataset, write_dataset
from seqrl.data.store import ReplayStore, same_space
from seqrl.envs.checks import env_arguments
from seqrl.envs.gridworlds import MOVES
from seqrl.errors import DataError, PresetError
from seqrl.progress import progress

ENV_ID = "seqrl/DistractingMemory-v0"


# ------------------------------------------------------------------------------------ DistractingMemory
def distracting_memory_episodes(width: int, n_steps: int, seed: int = 0, n_envs: int = 4,
                                **env_kwargs: Any) -> list[dict[str, np.ndarray]]:
    """At least `n_steps` steps of whole episodes of DistractingMemory(width) under uniformly random actions."""
    import seqrl.envs  # noqa: F401  registers the id

    space = gym.spaces.Discrete(int(env_kwargs.get("n_cues", 2)))
    return rollout(random_policy(space, seed, n_envs), ENV_ID, n_steps, n_envs, seed,
                   desc=f"distracting-memory w{width}", env_kwargs={"width": width, **env_kwargs})


def build_distracting_memory(width: int, n_steps: int, seed: int = 0, rebuild: bool = False, **env_kwargs: Any) -> str:
    """Write (or reuse, when its recipe matches) DistractingMemory(width)'s dataset; returns its id."""
    return build_wm_dataset("distracting-memory", n_steps, seed, rebuild, width=width, **env_kwargs)


# ------------------------------------------------------------------------------------ grid worlds
def distances_to(walkable: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Steps from every cell to `goal` along walkable cells (the goal itself may be unwalkable: a closed door is
    reached by walking into it); -1 where it cannot be reached."""
    dist = np.full(walkable.shape, -1, np.int64)
    dist[goal] = 0
    todo = deque([goal])
    rows, cols = walkable.shape
    while todo:
        r, c = todo.popleft()
        for dr, dc in MOVES:
            q = (r + dr, c + dc)
            if 0 <= q[0] < rows and 0 <= q[1] < cols and walkable[q] and dist[q] < 0:
                dist[q] = dist[r, c] + 1
                todo.append(q)
    return dist


@dataclass
class GridExplorer:
    """Exploration for the grid worlds (seqrl/envs/gridworlds.py): walk a shortest path to a target, then draw
    another. A target is a cell drawn uniformly among those reachable from the agent or, with probability
    `task_prob` where the env has keys and doors, a key still on the map or the door of a held key. A move is
    uniformly random with probability `noise`; a target not reached in 2 x its distance + 10 moves is dropped."""

    env: Any  # the unwrapped env
    rng: np.random.Generator
    noise: float = 0.1
    task_prob: float = 0.0
    goal: tuple[int, int] | None = None
    _dist: np.ndarray | None = field(default=None, repr=False)
    _budget: int = 0
    _opened: int = -1

    def reset(self) -> None:
        self.goal, self._dist, self._opened = None, None, -1

    def _done(self) -> bool:
        env = self.env
        if self.goal is None or self._budget <= 0:
            return True
        if self.goal in getattr(env, "doors", {}):  # a door target: done once open or its key is gone
            return self.goal in env.opened or env.doors[self.goal] not in env.held
        return env.pos == self.goal

    def _new_goal(self) -> None:
        env = self.env
        tasks = [c for c in getattr(env, "keys", {})]
        tasks += [d for d, k in getattr(env, "doors", {}).items() if k in env.held and d not in env.opened]
        if tasks and self.rng.random() < self.task_prob:
            self.goal = tasks[int(self.rng.integers(len(tasks)))]
        else:
            reach = np.argwhere(distances_to(env.walkable(), env.pos) > 0)
            self.goal = env.pos if not len(reach) else tuple(int(x) for x in reach[self.rng.integers(len(reach))])
        self._dist = None

    def __call__(self) -> int:
        env = self.env
        opened = len(getattr(env, "opened", ()))
        if self._done():
            self._new_goal()
        if self._dist is None or opened != self._opened:  # a door opened: paths may be shorter now
            self._dist, self._opened = distances_to(env.walkable(), self.goal), opened
            self._budget = 2 * max(int(self._dist[env.pos]), 0) + 10
        self._budget -= 1
        here = self._dist[env.pos]
        if self.rng.random() < self.noise or here <= 0:
            return int(self.rng.integers(4))
        r, c = env.pos
        best = [a for a, (dr, dc) in enumerate(MOVES)
                if 0 <= r + dr < self._dist.shape[0] and 0 <= c + dc < self._dist.shape[1]
                and self._dist[r + dr, c + dc] == here - 1]
        return best[int(self.rng.integers(len(best)))] if best else int(self.rng.integers(4))


def explore_episodes(env_id: str, n_steps: int, seed: int = 0, task_prob: float = 0.0, noise: float = 0.1,
                     **env_kwargs: Any) -> list[dict[str, np.ndarray]]:
    """Whole episodes of a grid world under `GridExplorer` until at least `n_steps` steps: the env is seeded once
    with `seed` (its later resets continue its generator), the walker from `seed` too."""
    import seqrl.envs  # noqa: F401

    env = gym.make(env_id, **env_kwargs).unwrapped
    walker = GridExplorer(env, np.random.default_rng([seed, 1]), noise=noise, task_prob=task_prob)
    episodes, total = [], 0
    with progress(n_steps, f"{env_id} explore", unit="step", leave=False) as bar:
        while total < n_steps:
            obs, _ = env.reset(seed=seed if not episodes else None)
            walker.reset()
            ep: dict[str, list] = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
            done = False
            while not done:
                a = walker()
                obs, r, term, trunc, _ = env.step(a)
                for k, v in (("obs", obs), ("act", a), ("rew", r), ("term", term), ("trunc", trunc)):
                    ep[k].append(v)
                done = term or trunc
            episodes.append({"obs": np.stack(ep["obs"]), "act": np.asarray(ep["act"], np.int64),
                             "rew": np.asarray(ep["rew"], np.float64), "term": np.asarray(ep["term"], bool),
                             "trunc": np.asarray(ep["trunc"], bool)})
            total += len(ep["act"])
            bar.update(len(ep["act"]))
    env.close()
    return episodes


# ------------------------------------------------------------------------------------ the one builder
@dataclass(frozen=True)
class WMTask:
    """An image task for world models and the recipe of its scripted dataset."""

    name: str  # seqrl collect --env NAME
    env_id: str
    quality: str  # the one --quality it takes
    id_arg: str  # the env argument that names the dataset (with its default and its letter in the id)
    id_default: int
    id_tag: str
    args: tuple[str, ...]  # env arguments `seqrl collect` takes as --set KEY=VALUE
    policy: str  # recorded in the recipe
    algorithm: str
    episodes: Callable[..., list[dict[str, np.ndarray]]]  # (n_steps, seed, **env_kwargs)
    ref_scores: Callable[[dict[str, Any]], tuple[float, float]]

    def dataset_id(self, env_kwargs: dict[str, Any] | None = None) -> str:
        v = (env_kwargs or {}).get(self.id_arg, self.id_default)
        return f"seqrl/{self.name}-{self.id_tag}{v}/{self.quality}-v0"


def _dm_episodes(n_steps: int, seed: int, width: int = 16, **kw: Any) -> list[dict[str, np.ndarray]]:
    return distracting_memory_episodes(width, n_steps, seed, **kw)


def _mdk_refs(kw: dict[str, Any]) -> tuple[float, float]:
    n = kw.get("n_keys", 7)
    return 0.0, float(n * (kw.get("key_reward", 0.1) + kw.get("door_reward", 1.0)))


TASKS: dict[str, WMTask] = {
    "distracting-memory": WMTask(
        "distracting-memory", ENV_ID, "random", "width", 16, "w", ("width", "n_cues", "distractors"), "uniform random",
        "scripted-random", _dm_episodes, lambda kw: (-1.0, 1.0)),
    "four-rooms": WMTask(
        "four-rooms", "seqrl/FourRooms-v0", "explore", "room", 7, "r", ("room", "view", "objects", "max_steps"),
        "shortest paths to uniformly drawn reachable cells, 10% random moves", "scripted-explore",
        lambda n_steps, seed, **kw: explore_episodes("seqrl/FourRooms-v0", n_steps, seed, **kw),
        lambda kw: (0.0, 1.0)),
    "multi-doors-keys": WMTask(
        "multi-doors-keys", "seqrl/MultiDoorsKeys-v0", "explore", "n_keys", 7, "k",
        ("n_keys", "view", "max_steps", "key_reward", "door_reward"),
        "shortest paths to uniformly drawn reachable cells or (probability 0.25) to keys and the doors of held keys, "
        "10% random moves", "scripted-explore",
        lambda n_steps, seed, **kw: explore_episodes("seqrl/MultiDoorsKeys-v0", n_steps, seed, task_prob=0.25, **kw),
        _mdk_refs),
}


def wm_task(name: str) -> WMTask | None:
    """The task of a `seqrl collect --env` name or env id; None for other envs."""
    for t in TASKS.values():
        if name in (t.name, t.env_id):
            return t
    return None


def check_env_kwargs(task: str | WMTask, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of the task's env that its dataset takes, `env_kwargs` over the env's defaults; PresetError
    naming the problem for an argument it does not take or a bad value."""
    t = task if isinstance(task, WMTask) else TASKS[task]
    unknown = set(env_kwargs) - set(t.args)
    if unknown:
        raise PresetError(f"{t.name}: unknown env argument(s) {sorted(unknown)}; it takes {', '.join(t.args)}")
    import seqrl.envs  # noqa: F401

    params = env_arguments(t.env_id)
    kwargs = {a: env_kwargs.get(a, params[a].default) for a in t.args}
    try:
        gym.make(t.env_id, **kwargs).close()
    except ValueError as e:
        raise PresetError(f"{t.name}: {e}") from e
    return kwargs


def build_wm_dataset(task: str, n_steps: int, seed: int = 0, rebuild: bool = False, **env_kwargs: Any) -> str:
    """Write (or reuse, when its recipe matches) the scripted dataset of `task` (a name of `TASKS` or an env id):
    at least `n_steps` steps of whole episodes; returns its id (`WMTask.dataset_id`). The recipe records every
    env argument (defaults filled in), so the same data asked for with or without its defaults is reused.
    PresetError for a bad n_steps, seed or env argument."""
    t = wm_task(task)
    if t is None:
        raise PresetError(f"no world-model task {task!r}; known: {', '.join(TASKS)}")
    for name, v, lo in (("n_steps", n_steps, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise PresetError(f"{t.name}: {name} must be an integer >= {lo}, got {v!r}")
    kwargs = check_env_kwargs(t, env_kwargs)
    did = t.dataset_id(kwargs)
    recipe = {"env_id": t.env_id, "env_kwargs": kwargs, "n_steps": n_steps, "seed": seed, "policy": t.policy}
    if reuse_dataset(did, recipe, rebuild):
        return did
    eps = t.episodes(n_steps, seed, **kwargs)
    lo, hi = t.ref_scores(kwargs)
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    write_dataset(did, eps, t.env_id, lo, hi, t.algorithm, f"{t.env_id} ({args}): {t.policy}", recipe=recipe,
                  replace=dataset_exists(did))
    return did


def load_image_store(did: str, env_id: str = ENV_ID, env_kwargs: dict[str, Any] | None = None) -> ReplayStore:
    """The dataset's store, after checking that its frames are the env's (shape, dtype, bounds): DataError else."""
    import seqrl.envs  # noqa: F401

    store = ReplayStore.from_minari(did)
    env = gym.make(env_id, **(env_kwargs or {}))
    space = env.observation_space
    env.close()
    check_frames(store.observation_space, space, did, env_id)
    return store


def check_frames(data_space: gym.Space, env_space: gym.Space, did: str, env_id: str) -> None:
    if not same_space(data_space, env_space):
        shape = lambda s: tuple(getattr(s, "shape", ()) or ())  # noqa: E731
        raise DataError(f"dataset {did!r}: its frames {shape(data_space)} {getattr(data_space, 'dtype', '')} differ "
                        f"from env {env_id!r}'s {shape(env_space)} {getattr(env_space, 'dtype', '')}; rebuild the "
                        f"dataset for this env")


__all__ = ["TASKS", "GridExplorer", "WMTask", "build_distracting_memory", "build_wm_dataset", "check_env_kwargs",
           "check_frames", "distances_to", "distracting_memory_episodes", "explore_episodes",
           "load_image_store", "wm_task"]
