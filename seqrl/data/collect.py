"""Roll out behaviour policies into Minari datasets.

A behaviour policy is any function ``obs (n_envs, *obs_shape) -> actions (n_envs, *act_shape)``
(random, a scripted controller, a stable-baselines3 model, a seqrl policy). `rollout` runs it in a
Gymnasium vector env and keeps whole episodes; `collect` builds the datasets of an env preset:

- scripted source (the quickstart's Pendulum): random, medium (the controller with a random action
  with probability `medium_epsilon`), expert (the controller), mixed = random + medium + expert.
- sb3 source (MuJoCo, D4RL recipe): see `seqrl.data.sb3` (SB3 training with resumable checkpoints).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from seqrl.cpu import torch_threads
from seqrl.data.minari_io import dataset_exists, dataset_path, read_episodes, reuse_dataset, write_dataset
from seqrl.data.store import flatten_obs, tree_map
from seqrl.errors import PresetError
from seqrl.presets import EnvPreset
from seqrl.progress import progress

PolicyFn = Callable[[np.ndarray], np.ndarray]


def rollout(policy: PolicyFn, env_id: str, n_steps: int, n_envs: int, seed: int, desc: str = "rollout",
            max_episode_steps: int | None = None, env_kwargs: dict | None = None) -> list[dict[str, np.ndarray]]:
    """Run `policy` until at least `n_steps` transitions of finished episodes are gathered.

    Returns episodes as dicts with obs (T+1 rows: the final observation included), act, rew, term, trunc.
    The policy runs with one torch thread: a behaviour policy of a few small layers on n_envs rows gains
    nothing from more, and on a busy machine their waits on each other cost (an SB3 SAC Hopper policy, 16
    envs, on 2 cores already running two jobs: 2,300-2,600 env steps/s at 1 thread, 850-890 at 2).
    """
    kwargs = dict(env_kwargs or {}) | ({} if max_episode_steps is None else {"max_episode_steps": max_episode_steps})
    envs = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **kwargs)
    obs, _ = envs.reset(seed=seed)
    row = lambda o, i: tree_map(lambda x: x[i], flatten_obs(o))  # noqa: E731  env i's observation (Dict: per leaf)
    open_eps: list[dict[str, list]] = [{"obs": [row(obs, i)], "act": [], "rew": [], "term": [], "trunc": []}
                                       for i in range(n_envs)]
    done_eps: list[dict[str, np.ndarray]] = []
    total = 0
    with torch_threads(1), progress(n_steps, desc, unit="step", leave=False) as bar:
        while total < n_steps:
            act = policy(obs)
            nxt, rew, term, trunc, info = envs.step(act)
            for i, ep in enumerate(open_eps):
                ep["act"].append(act[i])
                ep["rew"].append(rew[i])
                ep["term"].append(term[i])
                ep["trunc"].append(trunc[i])
                if term[i] or trunc[i]:
                    ep["obs"].append(flatten_obs(info["final_obs"][i]))
                    done_eps.append({k: tree_map(lambda *xs: np.stack(xs), *v) if k == "obs" else np.asarray(v)
                                     for k, v in ep.items()})
                    total += len(ep["rew"])
                    bar.update(len(ep["rew"]))
                    open_eps[i] = {"obs": [row(nxt, i)], "act": [], "rew": [], "term": [], "trunc": []}
                else:
                    ep["obs"].append(row(nxt, i))
            obs = nxt
    envs.close()
    return done_eps


def random_policy(space: gym.Space, seed: int, n_envs: int) -> PolicyFn:
    """Uniformly random actions of any action space for `n_envs` envs (a Box: uniform in its bounds, float32)."""
    if isinstance(space, gym.spaces.Box):
        rng = np.random.default_rng(seed)
        return lambda obs: rng.uniform(space.low, space.high, (n_envs, *space.shape)).astype(np.float32)
    space.seed(seed)
    return lambda obs: np.stack([space.sample() for _ in range(n_envs)])


# ------------------------------------------------------------------------------ scripted Pendulum
def pendulum_controller(epsilon: float, seed: int) -> PolicyFn:
    """Energy-shaping swing-up with a PD catch near the top, for Pendulum-v1.

    Pendulum-v1 integrates th'' = 3g/(2l) sin th + 3/(m l^2) u = 15 sin th + 3u (th = 0 upright), so
    E = th'^2/2 + 15 cos th has dE/dt = 3 u th' and equals 15 upright at rest. Far from the top the
    controller pumps energy towards 15; within ~30 degrees of the top it holds th = 0 with PD gains
    (kp=10 > 5 overcomes gravity, kd=2 damps). With probability `epsilon` an action is uniform in [-2, 2].
    """
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
        energy = 0.5 * w**2 + 15.0 * c
        swing = 0.2 * (15.0 - energy) * w
        catch = -(10.0 * np.arctan2(s, c) + 2.0 * w)
        u = np.clip(np.where(c > 0.85, catch, swing), -2.0, 2.0)
        u = np.where(rng.random(u.shape) < epsilon, rng.uniform(-2.0, 2.0, u.shape), u)
        return u[:, None].astype(np.float32)

    return act


SCRIPTED = {"Pendulum-v1": pendulum_controller}


def _scripted_episodes(env: EnvPreset, quality: str, seed: int) -> list[dict[str, np.ndarray]]:
    if env.env_id not in SCRIPTED:
        raise PresetError(f"env {env.name!r}: no scripted controller for {env.env_id}; known: {list(SCRIPTED)}")
    eps = {"random": 1.0, "medium": env.collect.medium_epsilon, "expert": 0.0}[quality]
    seed = seed + 1000 * ("random", "medium", "expert").index(quality)  # each quality its own initial states
    policy = SCRIPTED[env.env_id](eps, seed)
    return rollout(policy, env.env_id, env.collect.n_steps, env.collect.n_envs, seed, desc=f"{env.name}/{quality}",
                   max_episode_steps=env.max_episode_steps, env_kwargs=env.env_kwargs)


def recipe(env: EnvPreset, quality: str, seed: int) -> dict:
    """What makes a dataset of `collect`: kept in its metadata and compared before an existing one is reused."""
    return {"env_id": env.env_id, "env_kwargs": dict(env.env_kwargs), "max_episode_steps": env.max_episode_steps,
            "quality": quality, "seed": seed, "ref_min_score": env.ref_min_score, "ref_max_score": env.ref_max_score,
            "collect": dataclasses.asdict(env.collect)}


def collect(env: EnvPreset, quality: str, seed: int = 0, workdir: str | Path = "runs/collect",
            rebuild: bool = False) -> Path:
    """Build dataset `env.dataset_id(quality)` (and the ones it is made of), or return the existing one when
    its recorded recipe is this one. DataError when it was made otherwise, unless `rebuild`, which makes
    it again and replaces it once the new one is complete. A dataset without a recipe (made by an older
    seqrl) is reused as it is, with a warning."""
    dataset_id = env.dataset_id(quality)
    want = recipe(env, quality, seed)
    if reuse_dataset(dataset_id, want, rebuild, legacy_ok=True):
        return dataset_path(dataset_id)
    composite = {"mixed": ("random", "medium", "expert"), "medium-expert": ("medium", "expert")}
    if quality in composite:
        parts = [env.dataset_id(q) for q in composite[quality]]
        for q in composite[quality]:
            collect(env, q, seed, workdir, rebuild)
        episodes = [ep for pid in parts for ep in read_episodes(pid)[0]]
        description = f"{' + '.join(parts)}, concatenated"
        algo = "concatenation"
    elif env.collect.source == "scripted":
        episodes = _scripted_episodes(env, quality, seed)
        description = f"{quality} data: scripted controller, epsilon-random actions ({env.env_id})"
        algo = "scripted"
    else:
        from seqrl.data.sb3 import sb3_episodes

        episodes = sb3_episodes(env, quality, seed, Path(workdir) / env.name)
        description = f"{quality} data from stable-baselines3 {env.collect.algo} ({env.env_id}), D4RL recipe"
        algo = f"sb3-{env.collect.algo}"
    return write_dataset(dataset_id, episodes, env.env_id, env.ref_min_score, env.ref_max_score, algo, description,
                         recipe=want, replace=dataset_exists(dataset_id))
