"""TrajectoryTokenizer: turns windows of trajectories into token sequences for a backbone.

Dimension letters: B batch, K steps per window, m tokens per step, d model width; N images, C H W
channels, height, width.

An agent declares its token layout as a string of modality letters, one token each per step:

    R  return-to-go (scalar, multiplied by `reward_scale`)
    s  observation  (any supported space, one token: see below)
    a  action       (Box: linear; Discrete: embedding table)
    r  reward       (scalar, multiplied by `reward_scale`)

DT uses "R s a", BC and recurrent PPO "s", in-context models "s a r". Every token of step t gets the embedding of its
in-episode timestep added (when `max_timestep` > 0), then LayerNorm (unless `norm=False`) and dropout,
as in Chen et al. 2021. Tokens are interleaved step by step: position t*m + j holds modality j of step t. `readout`
says which modality's output feeds which prediction head (DT: the action head reads the "s" token),
so a policy never computes token positions itself. `step()` embeds one token for a batch of envs.

Observations. Every space becomes ONE "s" token per step, so token layouts and agents do not depend on
it. A Dict or Tuple observation arrives as a flat dict of leaf tensors keyed as
`seqrl.data.store.leaf_spaces` keys them ("observation", "desired_goal"; Tuple items "0", "1"; nested
"a/b"); any other space as one tensor, its single leaf. Each leaf becomes a d-vector:

    Box, float or integer, not an image   (x - mean) / std with the store's per-feature statistics, flattened,
                                          Linear (integer features are normalised too: raw counts or bytes
                                          in the hundreds would swamp the other leaves)
    image: a uint8 Box of rank 3          x / 255, a small CNN, Linear (below)
    Discrete(n, start)                    an embedding table of n rows
    MultiDiscrete(nvec, start)            one table of sum(nvec) rows, dimension j's values at offset
                                          nvec[0] + ... + nvec[j-1]; the dimensions' embeddings summed
    MultiBinary                           its 0/1 values as floats, Linear

and a Dict/Tuple token is the sum of its leaves' vectors. Summing, not concatenating then projecting:
for linear leaf embeddings the two are the same map (W1 x1 + W2 x2 = [W1 W2] [x1; x2]), so the sum is
the concatenation's projection without its extra matrix, and the width stays d whatever the number of
leaves. Normalisation statistics are buffers (per leaf for Dict/Tuple spaces), so they travel in the
state_dict and every checkpoint. A flat Box or Discrete observation keeps the layout it always had
(`embed["s"]` the Linear or table, buffers `obs_mean`/`obs_std`), so older weights still load.

Images. The channel axis is whichever of the first and last axes is shorter, the last on a tie: HWC is
Gymnasium's, Minari's and MiniGrid's layout ((84, 84, 3), (7, 7, 3)); CHW with up to as many channels
as pixels per side ((4, 84, 84) frame stacks) is recognised too. The CNN is the Nature-DQN trunk (Mnih
et al. 2015, "Human-level control through deep reinforcement learning": 32 8x8 filters stride 4, 64 4x4
stride 2, 64 3x3 stride 1, ReLU) when both sides have at least 36 pixels, the least that trunk takes; a
smaller grid gets two 3x3 convolutions (32 filters stride 1, 64 stride 2, padding 1), which keep its few
cells (MiniGrid's 7x7 view). A Linear maps the flattened features to d, where DQN had its 512 units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from seqrl.data.store import COMPOSITE, Batch, is_image, leaf_spaces, normalised, unit_stats
from seqrl.errors import DataError, PresetError
from seqrl.nn.norm import LayerNorm

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


# ------------------------------------------------------------------------------ leaf embeddings
class MultiDiscreteEmbedding(nn.Module):
    """MultiDiscrete(nvec, start) values (..., *nvec.shape) -> (..., d): one table, an offset per dimension."""

    def __init__(self, space: gym.spaces.MultiDiscrete, d: int):
        super().__init__()
        nvec = space.nvec.reshape(-1).astype(np.int64)
        self.table = nn.Embedding(int(nvec.sum()), d)
        self.rank = space.nvec.ndim
        # value v of dimension j reads row v - start_j + nvec_0 + ... + nvec_{j-1}; derived from the space
        offset = np.cumsum(nvec) - nvec - space.start.reshape(-1).astype(np.int64)
        self.register_buffer("offset", torch.as_tensor(offset), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = x.long().reshape(*x.shape[: x.dim() - self.rank], -1) + self.offset  # (..., D)
        return self.table(i).sum(-2)


class ImageEncoder(nn.Module):
    """uint8 images (..., H, W, C) or (..., C, H, W) -> (..., d): scaled to [0, 1], CNN, Linear (see the module doc)."""

    def __init__(self, shape: tuple[int, ...], d: int):
        super().__init__()
        self.channels_last = shape[-1] <= shape[0]
        h, w, c = shape if self.channels_last else (shape[1], shape[2], shape[0])
        if min(h, w) >= 36:  # Nature DQN (Mnih et al. 2015)
            layers = [nn.Conv2d(c, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(), nn.Conv2d(64, 64, 3, 1)]
        else:  # small grids: keep the cells
            layers = [nn.Conv2d(c, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1)]
        self.conv = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n = self.conv(torch.zeros(1, c, h, w)).shape[1]
        self.out = nn.Linear(n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).float() / 255.0  # (N, H, W, C) or (N, C, H, W)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        return self.out(self.conv(x)).view(*lead, -1)


def _leaf_net(space: gym.Space, d: int) -> nn.Module:
    """The module that embeds one observation leaf (normalisation and dtype handling in `_embed_leaf`)."""
    if isinstance(space, gym.spaces.Discrete):
        return nn.Embedding(int(space.n), d)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiDiscreteEmbedding(space, d)
    if is_image(space):
        return ImageEncoder(space.shape, d)
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        return nn.Linear(int(np.prod(space.shape)), d)
    raise DataError(f"unsupported space {space}: the tokenizer embeds Box, Discrete, MultiDiscrete, "
                    f"MultiBinary, Dict and Tuple observations")


def _embed_leaf(space: gym.Space, net: nn.Module, x: torch.Tensor, mean: torch.Tensor | None,
                std: torch.Tensor | None) -> torch.Tensor:
    """x (..., *leaf_shape) raw values of one observation leaf -> (..., d)."""
    if isinstance(space, gym.spaces.Discrete):
        return net(x.long() - int(space.start))
    if isinstance(space, gym.spaces.MultiDiscrete) or is_image(space):
        return net(x)
    x = x.float()
    if normalised(space):
        x = (x - mean) / std
    return net(x.reshape(*x.shape[: x.dim() - len(space.shape)], -1))  # (..., features)


class LeafEmbedding(nn.Module):
    """One leaf of a Dict/Tuple observation -> (..., d), with its normalisation statistics as buffers."""

    def __init__(self, space: gym.Space, d: int, mean: np.ndarray | None, std: np.ndarray | None):
        super().__init__()
        self.space = space
        self.net = _leaf_net(space, d)
        if normalised(space):
            unit = unit_stats(space)
            self.register_buffer("mean", torch.as_tensor(np.asarray(unit[0] if mean is None else mean, np.float32)))
            self.register_buffer("std", torch.as_tensor(np.asarray(unit[1] if std is None else std, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _embed_leaf(self.space, self.net, x, getattr(self, "mean", None), getattr(self, "std", None))


def _space_embedding(space: gym.Space, d: int) -> nn.Module:
    if isinstance(space, gym.spaces.Discrete):
        return nn.Embedding(int(space.n), d)
    if isinstance(space, gym.spaces.Box):
        return nn.Linear(int(np.prod(space.shape)), d)
    raise DataError(f"unsupported space {space}: the tokenizer embeds Box and Discrete actions")


# ------------------------------------------------------------------------------------ tokenizer
class TrajectoryTokenizer(nn.Module):
    def __init__(
        self,
        layout: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        d_model: int,
        readout: dict[str, str],
        obs_mean: Any = None,
        obs_std: Any = None,
        reward_scale: float = 1.0,
        max_timestep: int = 0,
        dropout: float = 0.0,
        norm: bool = True,
    ):
        """`max_timestep` > 0 adds a learned embedding of the in-episode timestep (clamped to it). `norm`:
        LayerNorm every token (DT, Chen et al. 2021); False passes the embeddings on as they are (recurrent
        PPO, whose encoder is CleanRL's Linear + ReLU).
        `obs_mean`/`obs_std`: `ReplayStore.obs_stats()` (arrays, or dicts by leaf for Dict/Tuple spaces);
        None is the identity."""
        super().__init__()
        self.layout = tuple(layout.split())
        for mod in self.layout:
            if mod not in MODALITIES:
                raise PresetError(f"token layout {layout!r}: unknown modality {mod!r}; known {list(MODALITIES)}")
        for head, mod in readout.items():
            if mod not in self.layout:
                raise PresetError(f"readout {head!r} reads modality {mod!r}, which layout {layout!r} lacks")
        self.readout = dict(readout)
        self.observation_space = observation_space
        self.discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self.discrete_act = isinstance(action_space, gym.spaces.Discrete)
        self.reward_scale = reward_scale
        self.max_timestep = max_timestep
        # leaf keys of a Dict/Tuple observation, in the order of embed["s"] (a ModuleList); None: one leaf
        self.obs_keys = tuple(leaf_spaces(observation_space)) if isinstance(observation_space, COMPOSITE) else None
        self.embed = nn.ModuleDict()
        for mod in self.layout:
            if mod == "s" and self.obs_keys is not None:
                if not all(st is None or isinstance(st, dict) for st in (obs_mean, obs_std)):
                    raise DataError(f"observation space {observation_space}: obs_mean and obs_std must be dicts "
                                    f"by leaf (ReplayStore.obs_stats gives them)")
                leaves, mean, std = leaf_spaces(observation_space), obs_mean or {}, obs_std or {}
                self.embed[mod] = nn.ModuleList(LeafEmbedding(leaves[k], d_model, mean.get(k), std.get(k))
                                                for k in self.obs_keys)
            elif mod == "s":
                self.embed[mod] = _leaf_net(observation_space, d_model)
            elif mod == "a":
                self.embed[mod] = _space_embedding(action_space, d_model)
            else:
                self.embed[mod] = nn.Linear(1, d_model)
        self.timestep = nn.Embedding(max_timestep + 1, d_model) if max_timestep > 0 else None
        self.norm = LayerNorm(d_model) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        if self.obs_keys is None:
            # normalisation statistics travel with the weights (state_dict) and so with every checkpoint
            unit = unit_stats(observation_space)
            mean, std = (unit[0] if obs_mean is None else obs_mean), (unit[1] if obs_std is None else obs_std)
            self.register_buffer("obs_mean", torch.as_tensor(np.asarray(mean, np.float32)))
            self.register_buffer("obs_std", torch.as_tensor(np.asarray(std, np.float32)))

    def _embed_obs(self, x: Any) -> torch.Tensor:
        """x: (..., *obs_shape), or {leaf: (..., *leaf_shape)} for a Dict/Tuple space -> (..., d)."""
        if self.obs_keys is None:
            return _embed_leaf(self.observation_space, self.embed["s"], x, self.obs_mean, self.obs_std)
        if not isinstance(x, dict) or x.keys() != set(self.obs_keys):
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise DataError(f"a {type(self.observation_space).__name__} observation needs a dict of leaves "
                            f"{sorted(self.obs_keys)}, got {got}")
        return sum(leaf(x[k]) for k, leaf in zip(self.obs_keys, self.embed["s"]))

    def _embed(self, mod: str, x: Any) -> torch.Tensor:
        """x: (..., *feature) raw values of one modality -> (..., d)."""
        if mod == "s":
            return self._embed_obs(x)
        if mod == "a" and self.discrete_act:
            return self.embed[mod](x.long())
        x = x.float()
        if mod == "a":
            return self.embed[mod](x)
        return self.embed[mod](x.unsqueeze(-1) * self.reward_scale)  # R, r: scalars

    def _finish(self, tok: torch.Tensor, timestep: torch.Tensor | None) -> torch.Tensor:
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

    def step(self, mod: str, x: Any, timestep: torch.Tensor | None) -> torch.Tensor:
        """One token per position: x (..., *feature) raw values of modality `mod` (for "s" of a Dict/Tuple
        space a dict of leaves, each (..., *leaf_shape)), timestep (...) -> (..., d).
        `timestep` may be None when the tokenizer has no timestep embedding."""
        return self._finish(self._embed(mod, x).unsqueeze(-2), timestep).squeeze(-2)
