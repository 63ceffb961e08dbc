"""The agent contract, and the parts every agent shares: TaskSpec, the action head, the action loss.

What the Trainer (seqrl/runners/trainer.py) and evaluation (seqrl/runners/evaluate.py) call, and
nothing else (dimension letters: B batch, K steps, n envs, d width, A action dim):

- ``Config``: a frozen dataclass of the agent's hyperparameters; ``__init__(config, spec: TaskSpec)``.
- ``sample(store, batch_size, generator) -> Batch``: which sampler of seqrl.data.samplers, what length
  (dataset sources). An env source steps the envs with ``explore(obs, state) -> (action, env_action,
  extras, state)``, asks ``bootstrap(obs, state) -> extras`` at observations it does not act on, and hands
  the collected rollout to ``rollout_batches(rollout, generator)``, which yields the update's batches; an
  agent with ``replay = True`` is instead sampled from the env source's store, as from a dataset.
- ``losses(batch) -> dict[str, Tensor]``: ``loss_*`` terms, summed per optimiser group; the rest is logged.
- ``optimizer_groups() -> list[OptimizerGroup]``: which parameters each optimiser steps, on which loss
  terms, at what learning rate. Default: one group, every parameter, every loss term.
- ``after_update()``: advance the agent's own schedules once per update (DM's self-evolution). Schedules
  live in buffers, so checkpoints carry them; `losses` only reads them.
- ``initial_state(n, device, **condition)``, ``act(obs, state) -> (action, state)``,
  ``observe(state, reward, done) -> state``: batched acting over n envs; `observe` feeds back the reward
  and decides what an episode end does to the state (reset it, or keep it across episodes).
- ``eval_protocol() -> EvalProtocol``: the conditions evaluation sweeps (DT: target returns) and the
  consecutive episodes of one trial.
- ``check_preset(preset)`` (classmethod): checks across the agent's, the source's and the trainer's
  configs that only the agent knows; raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, Distribution, Normal

from seqrl.data.minari_io import store_meta_scores
from seqrl.data.store import Batch, ReplayStore, check_action_space, space_from_dict, space_to_dict, unit_stats
from seqrl.errors import DataError, PresetError
from seqrl.presets import EnvPreset


@dataclass(frozen=True)
class TaskSpec:
    observation_space: gym.Space
    action_space: gym.Space
    obs_mean: np.ndarray | dict[str, np.ndarray]  # per feature; by leaf key for Dict/Tuple spaces (normalised leaves)
    obs_std: np.ndarray | dict[str, np.ndarray]  # like obs_mean (see ReplayStore.obs_stats)
    env: EnvPreset  # env id, reward scale, episode length, target returns, reference scores
    meta: dict[str, Any] = field(default_factory=dict)  # the store's metadata (dataset id, ...)

    @property
    def ref_scores(self) -> tuple[float, float]:
        """The dataset's reference returns (normalised score 0 and 100), else the env preset's."""
        return store_meta_scores(self.meta) or self.env.ref_scores

    @classmethod
    def from_store(cls, store: ReplayStore, env: EnvPreset) -> "TaskSpec":
        mean, std = store.obs_stats()
        return cls(store.observation_space, store.action_space, mean, std, env, dict(store.meta))

    @classmethod
    def from_env(cls, env: EnvPreset) -> "TaskSpec":
        """An env's spaces with identity normalisation (online agents). PresetError if the env cannot be made."""
        import seqrl.envs  # noqa: F401  registers seqrl/... ids

        try:
            probe = gym.make(env.env_id, **env.env_kwargs)
        except (gym.error.Error, TypeError, ValueError) as e:
            raise PresetError(f"env {env.env_id!r} with env_kwargs {env.env_kwargs}: {e}") from e
        obs_space, act_space = probe.observation_space, probe.action_space
        probe.close()
        space_to_dict(obs_space), check_action_space(act_space)  # DataError naming an unsupported space
        return cls(obs_space, act_space, *unit_stats(obs_space), env, {"env_id": env.env_id, "online": True})

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        stats = lambda s: {k: v.tolist() for k, v in s.items()} if isinstance(s, dict) else s.tolist()  # noqa: E731
        return {"observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space),
                "obs_mean": stats(self.obs_mean), "obs_std": stats(self.obs_std),
                "env": dataclasses.asdict(self.env), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        from seqrl.presets import build

        stats = lambda s: ({k: np.asarray(v, np.float32) for k, v in s.items()} if isinstance(s, dict)  # noqa: E731
                           else np.asarray(s, np.float32))
        return cls(space_from_dict(d["observation_space"]), space_from_dict(d["action_space"]),
                   stats(d["obs_mean"]), stats(d["obs_std"]),
                   build(EnvPreset, d["env"]), dict(d["meta"]))


def action_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, discrete: bool) -> dict[str, torch.Tensor]:
    """Masked action loss shared by DT, DM and BC: MSE (Box) or cross-entropy (Discrete).

    pred (B, K, A) actions or logits; target (B, K, A) or (B, K) int; mask (B, K) bool."""
    m = mask.float()
    if discrete:
        ce = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")  # (B*K,)
        loss = (ce * m.flatten()).sum() / m.sum()
        acc = ((pred.argmax(-1) == target).float() * m).sum() / m.sum()
        return {"loss_action": loss, "action_accuracy": acc.detach()}
    se = ((pred - target) ** 2).mean(-1)  # (B, K)
    return {"loss_action": (se * m).sum() / m.sum()}


def log_prob_entropy(dist: Distribution, act: torch.Tensor, discrete: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `act` and entropy per sample: a categorical's as is, a diagonal Gaussian's summed over
    the action's dimensions."""
    if discrete:
        return dist.log_prob(act), dist.entropy()
    return dist.log_prob(act).sum(-1), dist.entropy().sum(-1)


class ActionHead(nn.Module):
    """Hidden state (..., d) -> action prediction or distribution, and back to the env's units.

    Discrete: logits (a categorical distribution), argmax to act. Box: predictions live in [-1, 1] units,
    mapped to [low, high] to act (so the space's bounds must be finite); training targets are the
    dataset's actions mapped into [-1, 1]. `gaussian=False` (DT, DM, BC): a tanh-squashed point
    prediction. `gaussian=True` (PPO): a diagonal Gaussian with a state-independent log-std around an
    unsquashed mean, as CleanRL's continuous PPO; samples are clipped to [-1, 1] only on the way to the env.
    """

    def __init__(self, d_in: int, action_space: gym.Space, gaussian: bool = False, init_log_std: float = 0.0):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.gaussian = gaussian and not self.discrete
        if self.discrete:
            self.out = nn.Linear(d_in, int(action_space.n))
            return
        low, high = action_space.low, action_space.high
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise DataError(f"action space {action_space} has infinite bounds: the action head needs finite ones")
        self.out = nn.Linear(d_in, int(np.prod(action_space.shape)))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32).flatten())
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32).flatten())
        if self.gaussian:
            self.log_std = nn.Parameter(torch.full((self.out.out_features,), float(init_log_std)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (Discrete), or the action in [-1, 1] units (Box; the Gaussian's mean, unsquashed)."""
        return self.out(h) if self.discrete or self.gaussian else torch.tanh(self.out(h))

    def dist(self, h: torch.Tensor) -> Distribution:
        """The action distribution; Box actions in [-1, 1] units, independent dimensions summed by `log_prob`."""
        out = self.out(h)
        if self.discrete:
            return Categorical(logits=out)
        if not self.gaussian:
            raise TypeError("dist() needs ActionHead(gaussian=True) for Box actions")
        return Normal(out, self.log_std.exp().expand_as(out))

    def log_prob_entropy(self, dist: Distribution, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return log_prob_entropy(dist, act, self.discrete)

    def loss(self, pred: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = act if self.discrete else (act - self.center) / self.scale
        return action_loss(pred.float(), target, mask, self.discrete)

    def to_env(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.argmax(-1) if self.discrete else pred.clamp(-1.0, 1.0) * self.scale + self.center


# ------------------------------------------------------------------------------------ the contract
@dataclass
class OptimizerGroup:
    """One optimiser of an agent: its parameters, the loss terms that step them, its learning rate."""

    name: str
    params: list[nn.Parameter]
    losses: tuple[str, ...] | None = None
    """`loss_*` terms this optimiser minimises (None: all of them)"""
    lr_scale: float = 1.0
    """this group's learning rate is trainer.lr times this"""


@dataclass(frozen=True)
class EvalProtocol:
    """How an agent is evaluated: each condition (label, kwargs of `initial_state`) is run for a number of
    trials, each trial `episodes` consecutive episodes of one env; `observe` decides whether the agent's
    state survives an episode end (in-context agents keep it; DT resets)."""

    conditions: tuple[tuple[str, dict[str, Any]], ...] = (("", {}),)
    episodes: int = 1

    @classmethod
    def target_returns(cls, returns: tuple[float, ...]) -> "EvalProtocol":
        """One condition per target return (return-conditioned agents: DT, DM)."""
        return cls(tuple((f"target={r:g}", {"target_return": r}) for r in returns))


class Agent(nn.Module):
    """Defaults of the contract (see the module docstring); an agent overrides what it needs."""

    Config: type
    sources: tuple[str, ...] = ("dataset",)
    """the source kinds this agent can train from"""
    replay: bool = False
    """online, the env source replays its store with `sample` (world-model agents) instead of handing each
    rollout to `rollout_batches` (PPO)"""

    @classmethod
    def check_preset(cls, preset: Any) -> None:
        if preset.source.kind not in cls.sources:
            raise ValueError(f"agent {preset.agent!r} trains from source.kind {sorted(cls.sources)}, "
                             f"not {preset.source.kind!r}")

    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        raise NotImplementedError(f"{type(self).__name__} does not train from a dataset")

    def explore(self, obs: Any, state: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Any]:
        raise NotImplementedError(f"{type(self).__name__} does not collect its own experience")

    def bootstrap(self, obs: Any, state: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not collect its own experience")

    def rollout_batches(self, rollout: Any, generator: torch.Generator) -> Iterator[Any]:
        raise NotImplementedError(f"{type(self).__name__} does not train from its own rollouts")

    def optimizer_groups(self) -> list[OptimizerGroup]:
        return [OptimizerGroup("agent", [p for p in self.parameters() if p.requires_grad])]

    def after_update(self) -> None:
        """Advance the agent's schedules by one update (called by the trainer after the optimiser steps)."""

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol()
