"""Causal transformer backbone with a sliding-window KV cache.

Dimension letters: B batch (or envs), T tokens in a segment, W attention window (tokens), C cached
tokens a segment continues from (W, or 0 without a state), d model width, nh heads, hs head size
(d = nh * hs), L layers.

GPT-2 style pre-LayerNorm blocks, without positional embeddings of their own: order enters through
the causal mask and whatever the tokenizer adds (DT adds in-episode timestep embeddings, as Chen et
al. 2021 did). Each token attends to itself and the W-1 tokens before it in its episode.

`forward` runs a segment, continuing from a `KVState` (the keys and values of the last W tokens of
every layer); `step` is `forward` on one token. Because attention is limited to W tokens, a rollout
keeps only W cached tokens: each step costs O(W), however long the episode. `forward` over T tokens
equals T calls of `step` from the same state, across episode resets too (tests/test_backbones.py).

Two attention paths, the same numbers (tests/test_transformer.py):
- fused: PyTorch's `scaled_dot_product_attention(..., is_causal=True)`, taken exactly when `forward` gets
  `state=None`, `reset=None` and T <= W. Then plain causal attention is the window: every token may see
  all earlier ones. Padding at the end of a window needs no mask, since no real token attends to a later
  one. With DT's W = 3K - 1, a K-step window of 3K tokens would take the masked path; DT feeds its first
  3K - 1 tokens (policies/dt.py), which fit.
- masked: a boolean (B, 1, T, C + T) mask over the cache and the segment, for everything else: any
  `state`, an empty `initial_state` too; any `reset` tensor, an all-False one too; T > W.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


def gpt2_init(m: nn.Module, n_layers: int) -> None:
    """GPT-2 init (Radford et al. 2019), as CORL's DT applies it to the whole model: linear and
    embedding weights N(0, 0.02), biases 0; projections into the residual stream (marked
    `residual_out`) N(0, 0.02 / sqrt(2 n_layers)). Embeddings matter: PyTorch's default N(0, 1) would
    let a timestep embedding drown the observation it is added to."""
    if isinstance(m, nn.Linear):
        std = 0.02 / math.sqrt(2 * n_layers) if getattr(m, "residual_out", False) else 0.02
        nn.init.normal_(m.weight, 0.0, std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, 0.0, 0.02)


@dataclass
class KVState:
    k: tuple[torch.Tensor, ...]  # per layer (B, nh, W, hs), oldest token first
    v: tuple[torch.Tensor, ...]  # per layer (B, nh, W, hs)
    valid: torch.Tensor  # (B, W) bool: slot holds a token of the current episode


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.nh, self.hs = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj.residual_out = True  # scaled init, see CausalTransformer._init_weights
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, cache_k, cache_v, mask):
        """x (B, T, d); cache_k/v (B, nh, C, hs) or None; mask (B, 1, T, C+T) bool or None (plain causal)."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nh, self.hs).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if cache_k is not None:
            k = torch.cat([cache_k, k], dim=2)  # (B, nh, C+T, hs)
            v = torch.cat([cache_v, v], dim=2)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, d)  # (B, T, nh*hs)
        return self.resid_drop(self.proj(y)), k, v


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, activation: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        out = nn.Linear(4 * d_model, d_model)
        out.residual_out = True
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU() if activation == "relu" else nn.GELU(),
                                 out, nn.Dropout(dropout))

    def forward(self, x, cache_k, cache_v, mask):
        a, k, v = self.attn(self.ln1(x), cache_k, cache_v, mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class CausalTransformer(nn.Module):
    def __init__(self, d_model: int, n_layers: int, n_heads: int, window: int, dropout: float = 0.1,
                 activation: Literal["relu", "gelu"] = "relu"):
        """`window`: tokens each token attends to, itself included (DT: 3 tokens x context steps)."""
        super().__init__()
        self.d_model, self.n_layers, self.n_heads, self.window = d_model, n_layers, n_heads, window
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, activation) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(functools.partial(gpt2_init, n_layers=n_layers))

    # ------------------------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> KVState:
        nh, hs, W = self.n_heads, self.d_model // self.n_heads, self.window
        zeros = lambda: torch.zeros(batch, nh, W, hs, device=device, dtype=dtype)  # noqa: E731
        return KVState(tuple(zeros() for _ in self.blocks), tuple(zeros() for _ in self.blocks),
                       torch.zeros(batch, W, dtype=torch.bool, device=device))

    @staticmethod
    def reset(state: KVState, done: torch.Tensor) -> KVState:
        """Forget the cache of the envs where `done` (B,) is True."""
        return KVState(state.k, state.v, state.valid & ~done[:, None])

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, state: KVState | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, KVState]:
        """x (B, T, d) -> y (B, T, d) and the state after the segment.

        state: the cache to continue from (None: a fresh episode). reset (B, T) bool: True where a
        new episode starts at that token; it attends to nothing before it.
        """
        B, T, _ = x.shape
        W = self.window
        dev = x.device
        fast = state is None and reset is None and T <= W  # the fused path (module docstring)
        if fast:
            mask, key_ep, seg_ep = None, None, None
            cache_valid = torch.zeros(B, 0, dtype=torch.bool, device=dev)
        else:
            cache_valid = state.valid if state is not None else torch.zeros(B, 0, dtype=torch.bool, device=dev)
            C = cache_valid.shape[1]
            seg_ep = (torch.cumsum(reset.long(), 1) if reset is not None
                      else torch.zeros(B, T, dtype=torch.long, device=dev))  # (B, T) episode index in segment
            key_ep = torch.cat([torch.zeros(B, C, dtype=torch.long, device=dev), seg_ep], 1)  # (B, C+T)
            key_valid = torch.cat([cache_valid, torch.ones(B, T, dtype=torch.bool, device=dev)], 1)
            dist = torch.arange(T, device=dev)[:, None] - torch.arange(-C, T, device=dev)[None, :]  # (T, C+T)
            mask = ((dist >= 0) & (dist < W))[None] & (seg_ep[:, :, None] == key_ep[:, None, :]) & key_valid[:, None, :]
            mask = mask[:, None]  # (B, 1, T, C+T), broadcast over heads
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk(x, None if state is None else state.k[i], None if state is None else state.v[i], mask)
            ks.append(k[:, :, -W:])
            vs.append(v[:, :, -W:])
        # the new state: the last W keys/values, valid where they belong to the segment's last episode
        if fast:
            valid = torch.ones(B, min(T, W), dtype=torch.bool, device=dev)
        else:
            valid = (torch.cat([cache_valid, torch.ones(B, T, dtype=torch.bool, device=dev)], 1)
                     & (key_ep == seg_ep[:, -1:]))[:, -W:]
        if valid.shape[1] < W:  # fewer than W tokens seen: left-pad with empty slots
            pad = W - valid.shape[1]
            ks = [F.pad(k, (0, 0, pad, 0)) for k in ks]
            vs = [F.pad(v, (0, 0, pad, 0)) for v in vs]
            valid = F.pad(valid, (pad, 0), value=False)
        return self.ln_f(x), KVState(tuple(ks), tuple(vs), valid)

    def step(self, x: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        """One token per env: x (B, d) -> y (B, d). O(W) per call."""
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state
