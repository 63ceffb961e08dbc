"""Sequence backbones, one file each, on one contract (tests/test_backbones.py): `forward(x, state, reset)`,
`step(x, state)`, `initial_state(batch, device, dtype)`, `reset(state, done)`.

A backbone's state is a tensor, or tuples, lists and dataclasses of tensors, batch first. The helpers below
work on any of them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


def map_state(fn: Callable[..., torch.Tensor], state: Any, *rest: Any) -> Any:
    """fn over the tensors of a state (the same structure of `rest` alongside)."""
    if isinstance(state, torch.Tensor):
        return fn(state, *rest)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, *parts) for parts in zip(state, *rest))
    if dataclasses.is_dataclass(state):
        return type(state)(**{f.name: map_state(fn, getattr(state, f.name), *(getattr(r, f.name) for r in rest))
                              for f in dataclasses.fields(state)})
    raise TypeError(f"a state holds a {type(state).__name__}: states must be tensors, tuples, lists or dataclasses")


def index_state(state: Any, idx: torch.Tensor) -> Any:
    """Select rows (envs or sequences) of every tensor in a batch-first state."""
    return map_state(lambda s: s[idx], state)


def stack_states(states: list[Any]) -> Any:
    """C states of n rows each -> one state of C*n rows, row c*n + e = row e of state c."""
    return map_state(lambda *parts: torch.cat(parts, 0), *states)
