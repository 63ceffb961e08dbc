"""TrajectoryTokenizer: turns windows of trajectories into token sequences for a backbone.

Dimension letters: B batch, K steps per window, m tokens per step, d model width.

An agent declares its token layout as a string of modality letters, one token each per step:

    R  return-to-go (scalar, multiplied by `reward_scale`)
    s  observation  (Box: normalised with the store's mean/std, then linear; Discrete: embedding table)
    a  action       (Box: linear; Discrete: embedding table)
    r  reward       (scalar, multiplied by `reward_scale`)

DT uses "R s a", BC "s", in-context models "s a r". Every token of step t gets the embedding of its
in-episode timestep added (when `timestep_embedding`), then LayerNorm and dropout, as in Chen et al.
2021. Tokens are interleaved step by step: position t*m + j holds modality j of step t. `readout`
says which modality's output feeds which prediction head (DT: the action head reads the "s" token),
so a policy never computes token positions itself. `step()` embeds one token for a batch of envs.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from seqrl.data.store import Batch
from seqrl.errors import PresetError

MODALITIES = {"R": "rtg", "s": "obs", "a": "act", "r": "rew"}  # letter -> Batch field


@dataclass
class Tokens:
    x: torch.Tensor  # (B, K*m, d) interleaved token embeddings
    mask: torch.Tensor  # (B, K*m) bool, False at padding
    layout: tuple[str, ...]
    readout: dict[str, str]

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone output (B, K*m, d) -> {head: (B, K, d)} taken at each head's modality."""
        m = len(self.layout)
        h = h.view(h.shape[0], -1, m, h.shape[-1])  # (B, K, m, d)
        return {head: h[:, :, self.layout.index(mod)] for head, mod in self.readout.items()}


def _space_embedding(space: gym.Space, d: int) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return nn.Embedding(int(space.n), d)
    return nn.Linear(int(np.prod(space.shape)), d)


class TrajectoryTokenizer(nn.Module):
    def __init__(
        self,
        layout: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        d_model: int,
        readout: dict[str, str],
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        reward_scale: float = 1.0,
        max_timestep: int = 0,
        dropout: float = 0.0,
    ):
        """`max_timestep` > 0 adds a learned embedding of the in-episode timestep (clamped to it)."""
        super().__init__()
        self.layout = tuple(layout.split())
        for mod in self.layout:
            if mod not in MODALITIES:
                raise PresetError(f"token layout {layout!r}: unknown modality {mod!r}; known {list(MODALITIES)}")
        for head, mod in readout.items():
            if mod not in self.layout:
                raise PresetError(f"readout {head!r} reads modality {mod!r}, which layout {layout!r} lacks")
        self.readout = dict(readout)
        self.discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self.discrete_act = isinstance(action_space, gym.spaces.Discrete)
        self.reward_scale = reward_scale
        self.max_timestep = max_timestep
        self.embed = nn.ModuleDict()
        for mod in self.layout:
            if mod == "s":
                self.embed[mod] = _space_embedding(observation_space, d_model)
            elif mod == "a":
                self.embed[mod] = _space_embedding(action_space, d_model)
            else:
                self.embed[mod] = nn.Linear(1, d_model)
        self.timestep = nn.Embedding(max_timestep + 1, d_model) if max_timestep > 0 else None
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        shape = () if self.discrete_obs else observation_space.shape
        mean = np.zeros(shape, np.float32) if obs_mean is None else np.asarray(obs_mean, np.float32)
        std = np.ones(shape, np.float32) if obs_std is None else np.asarray(obs_std, np.float32)
        # normalisation statistics travel with the weights (state_dict) and so with every checkpoint
        self.register_buffer("obs_mean", torch.as_tensor(mean))
        self.register_buffer("obs_std", torch.as_tensor(std))

    def _embed(self, mod: str, x: torch.Tensor) -> torch.Tensor:
        """x: (..., *feature) raw values of one modality -> (..., d)."""
        if (mod == "s" and self.discrete_obs) or (mod == "a" and self.discrete_act):
            return self.embed[mod](x.long())
        x = x.float()
        if mod == "s":
            x = (x - self.obs_mean) / self.obs_std
            return self.embed[mod](x.flatten(x.dim() - self.obs_mean.dim()))  # image-like obs: flatten features
        if mod == "a":
            return self.embed[mod](x)
        return self.embed[mod](x.unsqueeze(-1) * self.reward_scale)  # R, r: scalars

    def _finish(self, tok: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.timestep is not None:
            tok = tok + self.timestep(timestep.clamp(0, self.max_timestep)).unsqueeze(-2)
        return self.drop(self.norm(tok))

    def forward(self, batch: Batch) -> Tokens:
        """Padded windows (B, K) -> Tokens with x (B, K*m, d)."""
        toks = torch.stack([self._embed(mod, getattr(batch, MODALITIES[mod])) for mod in self.layout], dim=2)  # (B,K,m,d)
        toks = self._finish(toks, batch.timestep)
        B, K, m, d = toks.shape
        mask = batch.mask.unsqueeze(-1).expand(B, K, m).reshape(B, K * m)
        return Tokens(toks.reshape(B, K * m, d), mask, self.layout, self.readout)

    def step(self, mod: str, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """One token per env: x (n, *feature) raw values of modality `mod`, timestep (n,) -> (n, d)."""
        return self._finish(self._embed(mod, x).unsqueeze(-2), timestep).squeeze(-2)
