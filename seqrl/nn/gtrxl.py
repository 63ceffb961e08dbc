"""Gated Transformer-XL (Parisotto et al. 2019, "Stabilizing Transformers for Reinforcement Learning",
arXiv:1910.06764), the memory backbone of the `gtrxl` agent.

Dimension letters: B batch (or envs), T tokens in a segment, M memory length (cached steps per layer),
S = M + T keys a segment attends over, d model width, nh heads, hs head size (d = nh * hs), L layers.

One token per env step. Each block, with the paper's identity-map reordering (their Eq. 4 to 9):

    y = ReLU(RelMHA(LN([StopGrad(mem), x])))      attention over the memory and the segment
    x = gate_1(x, y)                               GRU-type gate instead of the residual x + y
    y = ReLU(MLP(LN(x)))
    x = gate_2(x, y)

with the GRU gate r = s(W_r y + U_r x), z = s(W_z y + U_z x - b_g), h = tanh(W_g y + U_g (r * x)),
gate(x, y) = (1 - z) * x + z * h. The update-gate bias b_g (`gate_bias`, the paper's best runs used
2) makes z small at init, so every block starts near the identity map and the agent starts out
reactive (their Section 3).

Attention uses Transformer-XL relative positions (Dai et al. 2019, arXiv:1901.02860, Sec. 3.3): the
score of query i and key j is (q_i + u) . k_j + (q_i + v) . W_r R_(i-j), with R the sinusoidal
encoding of the distance i - j and u, v learnt per head. Instead of Transformer-XL's "relative
shift" trick, the (q + v) . W_r R term is computed once per distance 0..M and gathered with an index
(T, S) of distances; same numbers, easier to read.

The memory of layer l holds that layer's inputs of the previous M steps (the paper's StopGrad(M),
computed when the steps were taken). A token attends to itself and the M tokens before it in its
episode, in `forward` as in `step`, so stepping T times equals one `forward` over the segment from
the same memory (tests/test_backbones.py). Memory slots carry a `valid` flag; `reset` (and a `reset`
flag inside a segment) clears it per env at episode ends, so a new episode never attends to an old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.nn.norm import LayerNorm


@dataclass
class GTrXLState:
    mem: tuple[torch.Tensor, ...]  # per layer (B, M, d): that layer's inputs of the last M steps, oldest first
    valid: torch.Tensor  # (B, M) bool: the slot holds a step of the current episode


def sinusoid(positions: torch.Tensor, d: int) -> torch.Tensor:
    """positions (P,) -> (P, d) sinusoidal encoding (Vaswani et al. 2017), sin and cos halves."""
    inv = 1.0 / (10_000 ** (torch.arange(0, d, 2, device=positions.device, dtype=torch.float32) / d))
    ang = positions.float()[:, None] * inv[None]  # (P, d/2)
    return torch.cat([ang.sin(), ang.cos()], -1)


class GRUGate(nn.Module):
    """gate(x, y) = (1 - z) x + z h, the GRU-type gating of GTrXL (Parisotto et al. 2019, Eq. 9 to 12)."""

    def __init__(self, d: int, gate_bias: float):
        super().__init__()
        self.wy = nn.Linear(d, 3 * d, bias=False)  # W_r, W_z, W_g applied to the sub-layer output y
        self.ux = nn.Linear(d, 2 * d, bias=False)  # U_r, U_z applied to the residual stream x
        self.ug = nn.Linear(d, d, bias=False)  # U_g applied to r * x
        self.bg = nn.Parameter(torch.full((d,), float(gate_bias)))  # b_g > 0: z starts small, gate ~ identity

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wr, wz, wg = self.wy(y).chunk(3, -1)
        ur, uz = self.ux(x).chunk(2, -1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.bg)
        h = torch.tanh(wg + self.ug(r * x))
        return (1 - z) * x + z * h


class RelMultiHeadAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, memory: int):
        super().__init__()
        assert d % n_heads == 0, "d_model must be divisible by n_heads"
        self.nh, self.hs, self.M = n_heads, d // n_heads, memory
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.r = nn.Linear(d, d, bias=False)  # W_r: projects the distance encodings
        self.u = nn.Parameter(torch.zeros(n_heads, self.hs))  # content bias (Dai et al.'s u)
        self.v = nn.Parameter(torch.zeros(n_heads, self.hs))  # position bias (Dai et al.'s v)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) queries' inputs; ctx (B, S, d) keys' inputs (memory then segment, layer-normed);
        dist (T, S) long distance query - key, clamped to [0, M]; mask (B, 1, T, S) bool allowed."""
        B, T, d = x.shape
        S = ctx.shape[1]
        q = self.q(x).view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = self.kv(ctx).view(B, S, 2, self.nh, self.hs).permute(2, 0, 3, 1, 4)  # 2 x (B, nh, S, hs)
        rel = sinusoid(torch.arange(self.M + 1, device=x.device), d).to(x.dtype)  # (M+1, d) distances 0..M
        r = self.r(rel).view(self.M + 1, self.nh, self.hs).transpose(0, 1)  # (nh, M+1, hs)
        scale = 1.0 / math.sqrt(self.hs)
        pos = (q + self.v[:, None]) @ r.transpose(1, 2)[None]  # (B, nh, T, M+1): score per distance
        pos = torch.gather(pos, 3, dist[None, None].expand(B, self.nh, T, S))  # (B, nh, T, S)
        att = ((q + self.u[:, None]) @ k.transpose(2, 3) + pos) * scale  # (B, nh, T, S)
        # written out rather than F.scaled_dot_product_attention: with a float mask and a few queries its
        # CPU kernel is several times slower than these three ops at the sizes PPO rollouts use
        y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class GTrXLBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, memory: int, gate_bias: float):
        super().__init__()
        self.ln1 = LayerNorm(d)
        self.attn = RelMultiHeadAttention(d, n_heads, memory)
        self.gate1 = GRUGate(d, gate_bias)
        self.ln2 = LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Linear(d_ff, d))
        self.gate2 = GRUGate(d, gate_bias)

    def forward(self, x, mem, dist, mask):
        """x (B, T, d); mem (B, M, d) this layer's earlier inputs (no gradient flows into them)."""
        h = self.ln1(torch.cat([mem.detach(), x], 1))  # (B, S, d)
        x = self.gate1(x, F.relu(self.attn(h[:, mem.shape[1]:], h, dist, mask)))
        return self.gate2(x, F.relu(self.mlp(self.ln2(x))))


class GTrXL(nn.Module):
    def __init__(self, d_model: int, n_layers: int, n_heads: int, memory: int, d_ff: int | None = None,
                 gate_bias: float = 2.0):
        """`memory` M: steps each layer caches; a token attends to itself and the M steps before it."""
        super().__init__()
        if memory < 1:
            raise ValueError("memory must be >= 1")
        self.d_model, self.n_layers, self.memory = d_model, n_layers, memory
        self.blocks = nn.ModuleList(GTrXLBlock(d_model, n_heads, d_ff or 4 * d_model, memory, gate_bias)
                                    for _ in range(n_layers))
        self.ln_f = LayerNorm(d_model)

    # ------------------------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> GTrXLState:
        M, d = self.memory, self.d_model
        return GTrXLState(tuple(torch.zeros(batch, M, d, device=device, dtype=dtype) for _ in self.blocks),
                          torch.zeros(batch, M, dtype=torch.bool, device=device))

    @staticmethod
    def reset(state: GTrXLState, done: torch.Tensor) -> GTrXLState:
        """Forget the memory of the envs where `done` (B,) is True."""
        return GTrXLState(state.mem, state.valid & ~done[:, None])

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, state: GTrXLState | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, GTrXLState]:
        """x (B, T, d) -> y (B, T, d) and the memory after the segment.

        state: the memory to continue from (None: a fresh episode). reset (B, T) bool: True where a new
        episode starts at that step; it attends to nothing before it.
        """
        B, T, _ = x.shape
        M, dev = self.memory, x.device
        # a fresh memory holds nothing to attend to: its M key columns are left out (same result, a
        # (T, T) attention instead of (T, M + T), what training from episode starts runs)
        skip = M if state is None else 0
        if state is None:
            state = self.initial_state(B, dev, x.dtype)
        seg_ep = (torch.cumsum(reset.long(), 1) if reset is not None
                  else torch.zeros(B, T, dtype=torch.long, device=dev))  # (B, T) episode index inside the segment
        key_ep = torch.cat([torch.zeros(B, M, dtype=torch.long, device=dev), seg_ep], 1)  # (B, S)
        key_valid = torch.cat([state.valid, torch.ones(B, T, dtype=torch.bool, device=dev)], 1)  # (B, S)
        dist = torch.arange(T, device=dev)[:, None] - torch.arange(-M, T, device=dev)[None, :]  # (T, S)
        mask = ((dist >= 0) & (dist <= M))[None] & (seg_ep[:, :, None] == key_ep[:, None, :]) & key_valid[:, None, :]
        dist = dist.clamp(0, M)
        mems = []
        for blk, mem in zip(self.blocks, state.mem):
            mems.append(torch.cat([mem, x], 1)[:, -M:].detach())  # this layer's inputs of the last M steps
            x = blk(x, mem[:, skip:], dist[:, skip:], mask[:, None, :, skip:])
        valid = (key_valid & (key_ep == seg_ep[:, -1:]))[:, -M:]  # slots of the segment's last episode
        return self.ln_f(x), GTrXLState(tuple(mems), valid)

    def step(self, x: torch.Tensor, state: GTrXLState) -> tuple[torch.Tensor, GTrXLState]:
        """One token per env: x (B, d) -> y (B, d). O(M) per call."""
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state
