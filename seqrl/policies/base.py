"""TaskSpec: what a policy needs to know about its task, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.data.minari_io import store_meta_scores
from seqrl.data.store import ReplayStore, space_from_dict, space_to_dict
from seqrl.errors import DataError
from seqrl.presets import EnvPreset


@dataclass(frozen=True)
class TaskSpec:
    observation_space: gym.Space
    action_space: gym.Space
    obs_mean: np.ndarray
    obs_std: np.ndarray
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

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return {"observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space),
                "obs_mean": self.obs_mean.tolist(), "obs_std": self.obs_std.tolist(),
                "env": dataclasses.asdict(self.env), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        from seqrl.presets import build

        return cls(space_from_dict(d["observation_space"]), space_from_dict(d["action_space"]),
                   np.asarray(d["obs_mean"], np.float32), np.asarray(d["obs_std"], np.float32),
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


class ActionHead(nn.Module):
    """Hidden state (..., d) -> action prediction, and back to the env's units.

    Discrete: logits, argmax to act. Box: tanh in [-1, 1], rescaled to [low, high] to act, so the
    space's bounds must be finite; training targets are the dataset's actions mapped into [-1, 1].
    """

    def __init__(self, d_in: int, action_space: gym.Space):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.out = nn.Linear(d_in, int(action_space.n))
            return
        low, high = action_space.low, action_space.high
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise DataError(f"action space {action_space} has infinite bounds: the tanh action head needs finite ones")
        self.out = nn.Linear(d_in, int(np.prod(action_space.shape)))
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32).flatten())
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32).flatten())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(h) if self.discrete else torch.tanh(self.out(h))

    def loss(self, pred: torch.Tensor, act: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = act if self.discrete else (act - self.center) / self.scale
        return action_loss(pred.float(), target, mask, self.discrete)

    def to_env(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.argmax(-1) if self.discrete else pred * self.scale + self.center
