"""Behaviour cloning: an MLP from observation to action, the baseline every offline RL table has.

Same trainer, store and tokenizer as the sequence models: its layout is the single token "s" (the
tokenizer's normalised linear embedding is the MLP's first layer) and it samples single steps.
Defaults follow CORL's `any_percent_bc` (2 hidden layers of 256, ReLU, tanh output for Box actions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from seqrl.data.samplers import windows
from seqrl.data.store import Batch, ReplayStore
from seqrl.policies.base import ActionHead, Agent, TaskSpec
from seqrl.presets import require_at_least, require_in
from seqrl.tokenizer import TrajectoryTokenizer


@dataclass(frozen=True)
class BCConfig:
    hidden_dim: int = 256
    """width of each hidden layer"""
    n_layers: int = 2
    """hidden layers (the tokenizer's embedding is the first)"""
    dropout: float = 0.0
    """dropout after each hidden layer"""

    def __post_init__(self):
        require_at_least(self, 1, ("hidden_dim", "n_layers"))
        require_in(self, 0.0, 1.0, ("dropout",))


@dataclass
class BCState:
    n: int


class BC(Agent):
    Config = BCConfig

    def __init__(self, config: BCConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.tokenizer = TrajectoryTokenizer("s", spec.observation_space, spec.action_space, config.hidden_dim,
                                             readout={"action": "s"}, obs_mean=spec.obs_mean, obs_std=spec.obs_std)
        layers: list[nn.Module] = [nn.ReLU()]
        for _ in range(config.n_layers - 1):
            layers += [nn.Linear(config.hidden_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.head = ActionHead(config.hidden_dim, spec.action_space)

    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return windows(store, batch_size, 1, generator)  # single steps

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        pred = self.head(self.mlp(self.tokenizer(batch).x))  # (B, 1, A)
        return self.head.loss(pred, batch.act, batch.mask)

    def initial_state(self, n_envs: int, device: torch.device | str) -> BCState:
        return BCState(n_envs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: BCState) -> tuple[torch.Tensor, BCState]:
        h = self.mlp(self.tokenizer.step("s", obs, None))  # no timestep embedding
        return self.head.to_env(self.head(h)), state

    def observe(self, state: BCState, reward: torch.Tensor, done: torch.Tensor) -> BCState:
        return state
