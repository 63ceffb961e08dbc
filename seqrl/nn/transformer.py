"""Causal transformer backbone with a sliding-window KV cache.

Dimension letters: B batch (or envs), T tokens in a segment, W attention window (tokens), C cached
tokens a segment continues from (W, or 0 without a state), d model width, nh heads, hs head size
(d = nh * hs), L layers.

GPT-2 style pre-LayerNorm blocks, without positional embeddings of their own: order enters through
the causal mask and whatever the tokenizer adds (DT adds in-episode timestep embeddings, as Chen et
al. 2021 did), and with `rope=True` through rotary position embeddings in attention (Su et al. 2021,
RoFormer): queries and keys rotated by their token's position, so attention scores depend on how far
apart two tokens are, whatever the absolute positions (the in-context agents, whose tokens carry no
timestep). The state counts the tokens seen (`pos`); cached keys keep their rotation. Each token attends
to itself and the W-1 tokens before it in its episode.

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

from seqrl.nn.norm import LayerNorm


def gpt2_init(m: nn.Module, n_layers: int) -> None:
    """GPT-2 init (Radford et al. 2019) applied to the whole model, as CORL's DT does: linear and
    embedding weights N(0, 0.02), biases 0; projections into the residual stream (marked
    `residual_out`) N(0, 0.02 / sqrt(2 n_layers)), GPT-2's scaling (nanoGPT's; CORL and the DT paper's
    GPT-2 leave them at 0.02). Embeddings matter: PyTorch's default N(0, 1) would
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
    pos: torch.Tensor  # (B,) int64 tokens seen so far: the position of the next one (rotary embeddings)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, nh, T, hs): its two halves as the real and imaginary parts of hs/2 complex
    numbers, each turned by the angle whose cos/sin (B, 1, T, hs/2) are given."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.nh, self.hs = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj.residual_out = True  # scaled init, see gpt2_init
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, cache_k, cache_v, mask, rot=None):
        """x (B, T, d); cache_k/v (B, nh, C, hs) or None; mask (B, 1, T, C+T) bool or None (plain causal);
        rot: (cos, sin) of the segment's rotary angles (B, 1, T, hs/2), or None."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nh, self.hs).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if rot is not None:
            q, k = rotate(q, *rot), rotate(k, *rot)
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
        self.ln1 = LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = LayerNorm(d_model)
        out = nn.Linear(4 * d_model, d_model)
        out.residual_out = True
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU() if activation == "relu" else nn.GELU(),
                                 out, nn.Dropout(dropout))

    def forward(self, x, cache_k, cache_v, mask, rot=None):
        a, k, v = self.attn(self.ln1(x), cache_k, cache_v, mask, rot)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class CausalTransformer(nn.Module):
    def __init__(self, d_model: int, n_layers: int, n_heads: int, window: int, dropout: float = 0.1,
                 activation: Literal["relu", "gelu"] = "relu", rope: bool = False):
        """`window`: tokens each token attends to, itself included (DT: 3 tokens x context steps). `rope`:
        rotary position embeddings in attention (module docstring)."""
        super().__init__()
        self.d_model, self.n_layers, self.n_heads, self.window = d_model, n_layers, n_heads, window
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, activation) for _ in range(n_layers))
        self.ln_f = LayerNorm(d_model)
        self.apply(functools.partial(gpt2_init, n_layers=n_layers))
        self.rope = rope
        if rope:
            hs = d_model // n_heads
            if hs % 2:
                raise ValueError(f"rotary embeddings need an even head size, got d_model / n_heads = {hs}")
            # angle per position of each of the hs/2 pairs: 10000^(-2i/hs), RoFormer's frequencies
            self.register_buffer("inv_freq", 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs),
                                 persistent=False)

    # ------------------------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> KVState:
        nh, hs, W = self.n_heads, self.d_model // self.n_heads, self.window
        zeros = lambda: torch.zeros(batch, nh, W, hs, device=device, dtype=dtype)  # noqa: E731
        return KVState(tuple(zeros() for _ in self.blocks), tuple(zeros() for _ in self.blocks),
                       torch.zeros(batch, W, dtype=torch.bool, device=device),
                       torch.zeros(batch, dtype=torch.long, device=device))

    @staticmethod
    def reset(state: KVState, done: torch.Tensor) -> KVState:
        """Forget the cache of the envs where `done` (B,) is True (positions go on: only distances count)."""
        return KVState(state.k, state.v, state.valid & ~done[:, None], state.pos)

    def _rotation(self, pos: torch.Tensor, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) (B, 1, T, hs/2) of the rotary angles of positions pos (B,) + 0..T-1."""
        p = (pos[:, None] + torch.arange(T, device=pos.device)).float()  # (B, T)
        ang = p[:, None, :, None] * self.inv_freq  # (B, 1, T, hs/2)
        return ang.cos().to(dtype), ang.sin().to(dtype)

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
        pos = state.pos if state is not None else torch.zeros(B, dtype=torch.long, device=dev)
        rot = self._rotation(pos, T, x.dtype) if self.rope else None
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            x, k, v = blk(x, None if state is None else state.k[i], None if state is None else state.v[i], mask, rot)
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
        return self.ln_f(x), KVState(tuple(ks), tuple(vs), valid, pos + T)

    def step(self, x: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        """One token per env: x (B, d) -> y (B, d). O(W) per call."""
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state
