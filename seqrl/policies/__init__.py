"""Agents: one file each (config, network, loss, act), all on the contract of seqrl.policies.base.

`policy_class(name)` maps the `agent` key of a preset (agents/*.toml) to its class."""

from __future__ import annotations

from seqrl.errors import PresetError
from seqrl.policies.base import Agent, TaskSpec


def policy_class(agent: str) -> type:
    from seqrl.policies.bc import BC
    from seqrl.policies.dm import DecisionMamba
    from seqrl.policies.dreamer import Dreamer
    from seqrl.policies.dt import DecisionTransformer
    from seqrl.policies.icrl import AD, DPT
    from seqrl.policies.ppo import RecurrentPPO
    from seqrl.policies.world_model import WorldModel

    classes = {"dt": DecisionTransformer, "bc": BC, "dm": DecisionMamba, "ppo": RecurrentPPO, "dpt": DPT, "ad": AD,
               "s4wm": WorldModel, "rssm": WorldModel, "twm": WorldModel, "dreamer": Dreamer}
    if agent not in classes:
        raise PresetError(f"unknown agent {agent!r}; known agents: {sorted(classes)}")
    return classes[agent]


__all__ = ["Agent", "TaskSpec", "policy_class"]
