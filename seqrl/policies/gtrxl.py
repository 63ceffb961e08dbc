"""Recurrent actor-critics for online PPO: GTrXL (Parisotto et al. 2019) and the LSTM baseline.

Dimension letters: n envs, S sequences, L steps per sequence, d model width, A action dim.

One token per env step: the observation is embedded (Box: linear + ReLU; Discrete: a table), a
memory backbone reads it, and two linear heads give the action distribution and the value:
Discrete actions a categorical, Box actions a diagonal Gaussian with a state-independent log-std
(CleanRL's continuous PPO). The backbone is any module with the backbone contract (`forward(x, state,
reset)`, `step`, `initial_state`, `reset`, states batch-first): `GTrXLPolicy` uses `seqrl.nn.gtrxl`,
`LSTMPolicy` `seqrl.nn.lstm`; another memory (an SSM) is one more subclass of a few lines.

What the online runner (`seqrl.runners.online`) calls, besides the evaluation contract of every policy
(`initial_state`, `act`, `observe`, `eval_conditions`):

- `explore(obs, state) -> (action, logp, value, state)`: sample an action while collecting;
- `value(obs, state)`: the value, without advancing the memory (bootstrapping a truncated episode);
- `evaluate_actions(obs, act, first, state) -> (logp, entropy, value)`: re-score collected sequences
  from the memory recorded at their start (truncated BPTT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical, Distribution, Normal

from seqrl.data.store import space_to_dict
from seqrl.nn.gtrxl import GTrXL
from seqrl.nn.lstm import LSTM
from seqrl.policies.base import TaskSpec
from seqrl.presets import OnlineRunnerConfig, require_at_least


def _init_linear(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with a gain, zero bias (CleanRL's PPO: 0.01 on the policy head, 1 on the value)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Observation encoder + memory backbone + policy and value heads; subclasses pick the backbone."""

    RunnerConfig = OnlineRunnerConfig  # presets build the runner section of these agents with it
    window = 1  # offline sampling window: unused, these agents train online

    def __init__(self, spec: TaskSpec, backbone: nn.Module, d_model: int, init_log_std: float):
        super().__init__()
        self.spec = spec
        space_to_dict(spec.observation_space), space_to_dict(spec.action_space)  # Box / Discrete only
        obs_space, act_space = spec.observation_space, spec.action_space
        if isinstance(obs_space, gym.spaces.Discrete):
            self.encoder: nn.Module = nn.Embedding(int(obs_space.n), d_model)
        else:
            self.encoder = nn.Sequential(nn.Flatten(-len(obs_space.shape)) if obs_space.shape else nn.Identity(),
                                         _init_linear(nn.Linear(int(np.prod(obs_space.shape)), d_model), np.sqrt(2)),
                                         nn.ReLU())
        self.backbone = backbone
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        n_out = int(act_space.n) if self.discrete else int(np.prod(act_space.shape))
        self.actor = _init_linear(nn.Linear(d_model, n_out), 0.01)
        self.critic = _init_linear(nn.Linear(d_model, 1), 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((n_out,), float(init_log_std)))  # state-independent
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32).flatten())
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32).flatten())

    # ----------------------------------------------------------------------------- distributions
    def _dist(self, h: torch.Tensor) -> Distribution:
        out = self.actor(h)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def _logp_entropy(self, dist: Distribution, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            return dist.log_prob(act), dist.entropy()
        return dist.log_prob(act).sum(-1), dist.entropy().sum(-1)  # independent action dims

    def _encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs.long() if self.discrete_obs else obs.float())

    @property
    def discrete_obs(self) -> bool:
        return isinstance(self.spec.observation_space, gym.spaces.Discrete)

    # ------------------------------------------------------------------------ online runner API
    @torch.no_grad()
    def explore(self, obs: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """obs (n, *obs_shape) -> sampled action (n,) or (n, A) (Box: unclipped), logp (n,), value (n,), state."""
        h, state = self.backbone.step(self._encode(obs), state)
        dist = self._dist(h)
        action = dist.sample()
        logp, _ = self._logp_entropy(dist, action)
        return action, logp, self.critic(h)[:, 0], state

    @torch.no_grad()
    def value(self, obs: torch.Tensor, state: Any) -> torch.Tensor:
        """obs (n, *obs_shape) -> value (n,), as if stepping from `state` (which is not advanced)."""
        h, _ = self.backbone.step(self._encode(obs), state)
        return self.critic(h)[:, 0]

    def evaluate_actions(self, obs: torch.Tensor, act: torch.Tensor, first: torch.Tensor,
                         state: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score sequences: obs (S, L, *obs_shape), act (S, L[, A]), first (S, L) bool (an episode
        starts there), state: the memory before each sequence -> logp, entropy, value, each (S, L)."""
        h, _ = self.backbone(self._encode(obs), state, first)  # (S, L, d)
        logp, entropy = self._logp_entropy(self._dist(h), act)
        return logp, entropy, self.critic(h)[..., 0]

    # ----------------------------------------------------------------------- evaluation contract
    def eval_conditions(self) -> list[tuple[str, dict]]:
        return [("", {})]

    def initial_state(self, n_envs: int, device: torch.device | str) -> Any:
        return self.backbone.initial_state(n_envs, device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Deterministic: the most likely action (Discrete) or the mean clipped to the bounds (Box)."""
        h, state = self.backbone.step(self._encode(obs), state)
        out = self.actor(h)
        action = out.argmax(-1) if self.discrete else torch.maximum(torch.minimum(out, self.high), self.low)
        return action, state

    def observe(self, state: Any, reward: torch.Tensor, done: torch.Tensor) -> Any:
        """Clear the memory of the envs whose episode ended (`done` (n,) bool)."""
        return self.backbone.reset(state, done)


# ---------------------------------------------------------------------------------------- GTrXL
@dataclass(frozen=True)
class GTrXLConfig:
    """Defaults: a small GTrXL for memory tasks on a CPU; the paper (Parisotto et al. 2019) used 12
    layers of width 256 and memory 512 on DMLab-30."""

    d_model: int = 64
    """model width d (the observation embedding too)"""
    n_layers: int = 2
    """GTrXL blocks"""
    n_heads: int = 4
    """attention heads"""
    d_ff: int = 256
    """hidden width of each block's MLP"""
    memory: int = 64
    """M: steps of memory each layer caches; a step attends to itself and the M steps before it"""
    gate_bias: float = 2.0
    """b_g, the update-gate bias that starts every block near the identity (the paper's 2)"""
    init_log_std: float = 0.0
    """Box actions: initial log standard deviation of the Gaussian policy"""

    def __post_init__(self):
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(f"d_model {self.d_model} must be even and divisible by n_heads {self.n_heads}")
        require_at_least(self, 1, ("n_layers", "d_ff", "memory"))


class GTrXLPolicy(ActorCritic):
    Config = GTrXLConfig

    def __init__(self, config: GTrXLConfig, spec: TaskSpec):
        self.config = config
        backbone = GTrXL(config.d_model, config.n_layers, config.n_heads, config.memory, config.d_ff, config.gate_bias)
        super().__init__(spec, backbone, config.d_model, config.init_log_std)


# ----------------------------------------------------------------------------------------- LSTM
@dataclass(frozen=True)
class LSTMConfig:
    """The in-house recurrent PPO baseline (CleanRL's `ppo_atari_lstm` layout: encoder, LSTM, heads)."""

    d_model: int = 128
    """LSTM hidden size (the observation embedding too)"""
    n_layers: int = 1
    """stacked LSTM layers"""
    init_log_std: float = 0.0
    """Box actions: initial log standard deviation of the Gaussian policy"""

    def __post_init__(self):
        if self.d_model < 1 or self.n_layers < 1:
            raise ValueError("d_model and n_layers must be >= 1")


class LSTMPolicy(ActorCritic):
    Config = LSTMConfig

    def __init__(self, config: LSTMConfig, spec: TaskSpec):
        self.config = config
        super().__init__(spec, LSTM(config.d_model, config.n_layers), config.d_model, config.init_log_std)
