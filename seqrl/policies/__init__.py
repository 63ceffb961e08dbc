"""Policies: each = tokenizer + backbone + heads + loss + act, one file each.

The contract every policy meets (the runners rely on nothing else):

- ``Config``: a frozen dataclass of its hyperparameters (class attribute).
- ``__init__(config, spec: TaskSpec)``.
- ``window``: how many steps per sampled window the loss wants.
- ``loss(batch) -> dict[str, Tensor]``: the runner sums the ``loss_*`` entries and logs all of them.
- ``initial_state(n_envs, device, **condition)``, ``act(obs, state) -> (action, state)``,
  ``observe(state, reward, done) -> state``: batched acting over a vector env; ``observe`` feeds back
  the reward and resets the envs that finished.
- ``eval_conditions() -> list[(label, condition)]``: what evaluation sweeps (DT: target returns).
"""

from __future__ import annotations

from seqrl.errors import PresetError
from seqrl.policies.base import TaskSpec


def policy_class(agent: str) -> type:
    from seqrl.policies.bc import BC
    from seqrl.policies.dt import DecisionTransformer

    classes = {"dt": DecisionTransformer, "bc": BC}
    from seqrl.policies.dm import DecisionMamba

    classes["dm"] = DecisionMamba
    from seqrl.policies.gtrxl import GTrXLPolicy, LSTMPolicy  # online agents (seqrl.runners.online)

    classes["gtrxl"] = GTrXLPolicy
    classes["lstm_ppo"] = LSTMPolicy
    if agent not in classes:
        raise PresetError(f"unknown agent {agent!r}; known agents: {sorted(classes)}")
    return classes[agent]


__all__ = ["TaskSpec", "policy_class"]
