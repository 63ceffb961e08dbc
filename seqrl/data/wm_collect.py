"""Scripted datasets for the image world-model tasks (seqrl/envs/image_memory.py), written as Minari datasets
with `write_dataset`; uint8 frames stay uint8 in the file and in the store.

DistractingMemory's exploration policy: uniformly random actions. In the hallway they do nothing; at the doors
the choice is uniform, so half the episodes pay +1 and half -1, whatever the cue: the reward of the last step
can only be predicted by remembering the cue. All episodes are one stream, so `sequences` may run across
episode boundaries (world models see `first` flags there).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from seqrl.data.collect import random_policy, rollout
from seqrl.data.minari_io import dataset_exists, reuse_dataset, write_dataset
from seqrl.data.store import ReplayStore, same_space
from seqrl.errors import DataError

ENV_ID = "seqrl/DistractingMemory-v0"


def dataset_id(width: int) -> str:
    return f"seqrl/distracting-memory-w{width}/random-v0"


def distracting_memory_episodes(width: int, n_steps: int, seed: int = 0, n_envs: int = 4,
                                **env_kwargs: Any) -> list[dict[str, np.ndarray]]:
    """At least `n_steps` steps of whole episodes of DistractingMemory(width) under uniformly random actions."""
    import seqrl.envs  # noqa: F401  registers the id

    space = gym.spaces.Discrete(int(env_kwargs.get("n_cues", 2)))
    return rollout(random_policy(space, seed, n_envs), ENV_ID, n_steps, n_envs, seed,
                   desc=f"distracting-memory w{width}", env_kwargs={"width": width, **env_kwargs})


def build_distracting_memory(width: int, n_steps: int, seed: int = 0, rebuild: bool = False, **env_kwargs: Any) -> str:
    """Write (or reuse, when its recipe matches) the dataset `dataset_id(width)`; returns its id."""
    did = dataset_id(width)
    recipe = {"env_id": ENV_ID, "env_kwargs": {"width": width, **env_kwargs}, "n_steps": n_steps, "seed": seed,
              "policy": "uniform random"}
    if reuse_dataset(did, recipe, rebuild):
        return did
    eps = distracting_memory_episodes(width, n_steps, seed, **env_kwargs)
    write_dataset(did, eps, ENV_ID, -1.0, 1.0, "scripted-random",
                  f"DistractingMemory width {width}: uniformly random actions", recipe=recipe,
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


__all__ = ["build_distracting_memory", "check_frames", "dataset_id", "distracting_memory_episodes", "load_image_store"]
