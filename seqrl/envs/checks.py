"""Argument checks the shipped envs share: a clear ValueError naming the env, the argument and the value; and
the arguments a registered env id takes."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator


def env_arguments(env_id: str) -> Mapping[str, inspect.Parameter]:
    """The constructor arguments of a registered env id (names and defaults), without making the env."""
    return inspect.signature(load_env_creator(gym.spec(env_id).entry_point)).parameters


def check_int(owner: str, name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi] (hi None: no upper bound), or a ValueError naming `owner`'s argument `name`."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo
            or (hi is not None and value > hi)):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{owner} {name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_action(action: Any, n: int, what: str) -> int:
    """A Discrete(n) action as an int, or a ValueError naming it (`what` says what the n actions are)."""
    if type(action) is int and 0 <= action < n:  # the common case, first: envs step millions of times
        return action
    if isinstance(action, np.ndarray) and action.shape == ():
        action = action.item()
    if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < n:
        raise ValueError(f"action {action!r} is not one of the {what} (ints 0 to {n - 1})")
    return int(action)
