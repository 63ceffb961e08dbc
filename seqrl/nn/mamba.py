"""Mamba backbone (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv:2312.00752), and its multi-grained variant for Decision Mamba (Lv et al. 2024, arXiv:2406.05427).

Dimension letters: B batch (or envs), T tokens in a segment, d model width, E = expand * d inner width,
N state size per channel, R rank of the Δ projection, W conv kernel, g tokens per fine-grained group.

One Mamba mixer, token by token (x_t in R^d):

    (x', z) = in_proj(x)                          two E-wide streams: the SSM input and its gate
    u       = silu(causal depthwise conv_W(x'))   local mixing over the last W tokens
    (δ, B, C) = x_proj(u)                         δ in R^R, B, C in R^N: the "selective" parameters
    Δ       = softplus(dt_proj(δ))                per-channel step size, E wide
    h_t     = exp(Δ A) h_{t-1} + Δ B u            A = -exp(A_log) (E, N), state h (E, N)
    y       = (C . h_t + D u) * silu(z)           then out_proj back to d

The scan runs through `seqrl.kernels.scan.selective_scan` (chunked PyTorch on CPU, Triton on CUDA)
and the one-token update through `selective_step`. A mixer's recurrent state is the last W-1 conv
inputs and h: `step` costs O(1) per token, however long the episode.

`MambaBackbone` stacks pre-norm residual blocks, x <- x + mixer(RMSNorm(x)), and a final RMSNorm
(RMSNorm as in the reference Mamba language models and the Decision Mamba code).

Multi-grained (`fine_group = g > 0`, Decision Mamba): each block adds a second, fine-grained mixer
whose scan runs inside each group of g consecutive tokens only (DM: g = 3, one (R, s, a) triplet),
starting from a zero state at every group; its LayerNorm'ed output is added to the coarse-grained
mixer's output, which scans the whole sequence:

    x <- x + mixer_coarse(RMSNorm(x)) + LayerNorm(mixer_fine(RMSNorm(x)))

Both branches are causal, so acting token by token equals the full forward.

Episode resets: `forward(x, state, reset)` takes reset (B, T) True where a new episode starts at that
token. The segment is cut at every column where some env resets, and at each cut the state of the
envs that reset is zeroed (conv inputs, SSM state, and the fine-grained group phase). So a new episode
sees nothing of the one before, exactly as `reset()` + `step()` would; training windows carry no
resets and run as one piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.kernels.conv import causal_conv_silu
from seqrl.kernels.scan import selective_scan, selective_step
from seqrl.nn.norm import LayerNorm, RMSNorm


@dataclass
class MixerState:
    conv: torch.Tensor  # (B, E, W-1) the last W-1 inputs of the causal conv, oldest first
    ssm: torch.Tensor  # (B, E, N) float32 (float64 in a float64 model)


@dataclass
class MambaState:
    layers: tuple[MixerState, ...]  # coarse-grained mixer of each layer
    fine: tuple[MixerState, ...]  # fine-grained mixer of each layer (empty when fine_group = 0)
    phase: torch.Tensor  # (B,) long: tokens already seen in the current fine-grained group


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan accumulates in for inputs of `dtype`: float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _select(done: torch.Tensor, s: MixerState) -> MixerState:
    keep = (~done).to(s.conv.dtype)[:, None, None]
    return MixerState(s.conv * keep, s.ssm * keep.to(s.ssm.dtype))


class MambaMixer(nn.Module):
    """The selective SSM block of Mamba: (B, T, d) -> (B, T, d), with a recurrent MixerState."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4):
        super().__init__()
        E = expand * d_model
        self.d_inner, self.d_state, self.d_conv = E, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)  # Mamba's "auto" rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=True)  # depthwise; causal padding done by hand
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self.out_proj.residual_out = True  # scaled by 1/sqrt(n_layers) in MambaBackbone._init_weights
        # Δ init (Mamba, Sec. 3.6 / reference code): dt_proj weight U(±R^-1/2); bias = softplus^-1(dt)
        # with dt log-uniform in [dt_min, dt_max], so that softplus(bias) starts in that range
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True
        # S4D-real init: A = -(1, 2, ..., N) for every channel, kept as log for positivity; D skip = 1.
        # Neither should be weight-decayed (marked; the runner's param_groups decays tensors of dim >= 2)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def initial_state(self, batch: int, device, dtype=torch.float32) -> MixerState:
        """Zeros: the conv inputs in `dtype`, the SSM state in at least float32 (the scans accumulate there)."""
        return MixerState(torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=_acc(dtype)))

    def _fixed(self, dtype: torch.dtype):
        """A = -exp(A_log) (E, N), D (E,) and the Δ bias (E,) in the scans' accumulation dtype for inputs
        of `dtype` (float32, or float64 for a float64 model)."""
        acc = _acc(dtype)
        return -torch.exp(self.A_log.to(acc)), self.D.to(acc), self.dt_proj.bias.to(acc)

    def _ssm_params(self, u: torch.Tensor):
        """u (..., E) -> Δ before bias and softplus (..., E), B (..., N), C (..., N)."""
        dbc = self.x_proj(u)
        delta, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return delta @ self.dt_proj.weight.t(), B, C  # dt_proj's bias enters the scan as delta_bias

    def forward(self, x: torch.Tensor, state: MixerState | None = None,
                group: int = 0) -> tuple[torch.Tensor, MixerState | None]:
        """x (B, T, d) -> y (B, T, d), the state after the segment.

        group g > 0 (Decision Mamba's fine-grained branch): x is whole groups of g tokens, each mixed on
        its own from a zero state (conv window and SSM); `state` must be None, and so is the state returned:
        a next group starts from zeros. One scan over T with a restart every g steps."""
        Bsz, T, _ = x.shape
        E, W = self.d_inner, self.d_conv
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # 2 x (B, T, E)
        if group and (state is not None or T % group):
            raise ValueError(f"MambaMixer: group={group} takes whole groups (T={T}) and no state")
        if state is None:  # from zeros (a training window, a fresh segment, the fine-grained groups)
            u = causal_conv_silu(xs, self.conv1d.weight[:, 0], self.conv1d.bias, group)  # (B, T, E)
            h0, keep = None, min(T, W - 1)
            conv_state = xs[:, T - keep:].transpose(1, 2)  # the last W-1 conv inputs, zeros before step 0
            if keep < W - 1:
                conv_state = F.pad(conv_state, (W - 1 - keep, 0))
        else:
            xs = torch.cat([state.conv.to(xs.dtype), xs.transpose(1, 2)], dim=2)  # (B, E, W-1+T): causal left context
            u = F.silu(F.conv1d(xs, self.conv1d.weight, self.conv1d.bias, groups=E)).transpose(1, 2).contiguous()
            h0, conv_state = state.ssm, xs[:, :, xs.shape[2] - (W - 1):]
        delta, Bm, Cm = self._ssm_params(u)  # (B, T, E), (B, T, N), (B, T, N)
        A, D, dt_bias = self._fixed(x.dtype)  # A (E, N)
        # the scan takes (B, E, T) shapes; on CUDA its kernels read these views of (B, T, E) memory in place (z as
        # half of in_proj's output) and give y as one, which out_proj reads in place too
        y, h = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), D,
                              z.transpose(1, 2), delta_bias=dt_bias, delta_softplus=True,
                              h0=h0, return_state=True, reset_every=group)  # y (B, E, T), h (B, E, N)
        out = self.out_proj(y.transpose(1, 2))
        return out, None if group else MixerState(conv_state, h)

    def step(self, x: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token: x (B, d) -> y (B, d). O(1): a rolling conv window and one SSM update."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # 2 x (B, E)
        window = torch.cat([state.conv.to(xs.dtype), xs[:, :, None]], dim=2)  # (B, E, W)
        u = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (B, E)
        delta, Bm, Cm = self._ssm_params(u)
        A, D, dt_bias = self._fixed(x.dtype)
        y, h = selective_step(state.ssm, u, delta, A, Bm, Cm, D, z, delta_bias=dt_bias, delta_softplus=True)
        return self.out_proj(y), MixerState(window[:, :, 1:], h)


class MambaLayer(nn.Module):
    """Pre-norm residual block: x + mixer(RMSNorm(x)) [+ LayerNorm(fine mixer(RMSNorm(x)))]."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, fine_group: int):
        super().__init__()
        self.norm = RMSNorm(d_model, eps=1e-5)
        self.mixer = MambaMixer(d_model, d_state, d_conv, expand)
        self.fine_group = fine_group
        if fine_group:
            self.fine = MambaMixer(d_model, d_state, d_conv, expand)
            self.fine_norm = LayerNorm(d_model)

    def fine_forward(self, x: torch.Tensor, state: MixerState, phase: torch.Tensor,
                     aligned: bool) -> tuple[torch.Tensor, MixerState]:
        """Fine-grained branch over a segment x (B, T, d): a scan inside each group of g tokens.
        `aligned`: every env is at a group start (phase 0), where the incoming state is never read."""
        g = self.fine_group
        T = x.shape[1]
        if T % g == 0 and aligned:  # whole groups from a group start: one scan, restarting every g tokens
            return self.fine(x, group=g)[0], state  # ends at a group start too, where a state is never read
        ys = []  # partial groups (acting, segments cut at resets): token by token
        for t in range(T):
            state = _select((phase + t) % g == 0, state)  # a group starts: forget the last one
            y, state = self.fine.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1), state

    def forward(self, x, state: MixerState | None, fine_state: MixerState | None, phase: torch.Tensor, aligned: bool):
        h = self.norm(x)
        y, state = self.mixer(h, state)
        if self.fine_group:
            yf, fine_state = self.fine_forward(h, fine_state, phase, aligned)
            y = y + self.fine_norm(yf)
        return x + y, state, fine_state

    def step(self, x, state: MixerState, fine_state: MixerState | None, phase: torch.Tensor):
        h = self.norm(x)
        y, state = self.mixer.step(h, state)
        if self.fine_group:
            yf, fine_state = self.fine.step(h, _select(phase == 0, fine_state))
            y = y + self.fine_norm(yf)
        return x + y, state, fine_state


class MambaBackbone(nn.Module):
    def __init__(self, d_model: int, n_layers: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 fine_group: int = 0):
        """`fine_group` g > 0 adds the fine-grained branch of Decision Mamba over groups of g tokens."""
        super().__init__()
        if d_conv < 1 or d_state < 1 or expand < 1 or fine_group < 0:
            raise ValueError("d_conv, d_state and expand must be >= 1 and fine_group >= 0")
        self.d_model, self.n_layers, self.fine_group = d_model, n_layers, fine_group
        self.layers = nn.ModuleList(MambaLayer(d_model, d_state, d_conv, expand, fine_group) for _ in range(n_layers))
        self.norm_f = RMSNorm(d_model, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        """Mamba's reference init: PyTorch's default for the linear maps, except dt_proj (MambaMixer) and
        the projections into the residual stream, rescaled by 1/sqrt(n_layers) as in GPT-2 (one residual
        branch per layer); linear biases zero except dt_proj's."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Linear) and getattr(m, "residual_out", False):
                with torch.no_grad():
                    m.weight /= math.sqrt(self.n_layers)

    # ------------------------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> MambaState:
        """Zeros. Every mixer's state has the same shape and states are never written in place, so all mixers
        share one pair of zero tensors (two fills, not four per layer, on each training forward)."""
        zero = self.layers[0].mixer.initial_state(batch, device, dtype)
        return MambaState((zero,) * self.n_layers, (zero,) * self.n_layers if self.fine_group else (),
                          torch.zeros(batch, dtype=torch.long, device=device))

    @staticmethod
    def reset(state: MambaState, done: torch.Tensor) -> MambaState:
        """Zero the state of the envs where `done` (B,) is True: their next token starts an episode."""
        return MambaState(tuple(_select(done, s) for s in state.layers), tuple(_select(done, s) for s in state.fine),
                          torch.where(done, torch.zeros_like(state.phase), state.phase))

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, state: MambaState | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState]:
        """x (B, T, d) -> y (B, T, d) and the state after the segment.

        state: where to continue from (None: a fresh episode). reset (B, T) bool: True where a new episode
        starts at that token; the segment is cut there and those envs' state zeroed (module docstring)."""
        B, T, _ = x.shape
        fresh = state is None  # known to start at a group boundary, without a device sync
        if fresh:
            state = self.initial_state(B, x.device, x.dtype)
        cuts = [0, T]
        if reset is not None:
            cuts = sorted({0, T, *torch.nonzero(reset.any(0)).flatten().tolist()})
        ys = []
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            if reset is not None:
                state = self.reset(state, reset[:, t0])
            zeros = fresh and t0 == 0  # the coarse mixers start from zeros (their conv without a carried window)
            aligned = not self.fine_group or zeros or not bool(state.phase.any())
            y, state = self._segment(x[:, t0:t1], state, aligned, zeros)
            ys.append(y)
        return torch.cat(ys, 1), state

    def _segment(self, x: torch.Tensor, state: MambaState, aligned: bool,
                 zeros: bool) -> tuple[torch.Tensor, MambaState]:
        """One segment without resets; `zeros`: `state` is the initial one, so the coarse mixers are given None."""
        layers, fine = [], []
        for i, layer in enumerate(self.layers):
            x, s, f = layer(x, None if zeros else state.layers[i], state.fine[i] if self.fine_group else None,
                            state.phase, aligned)
            layers.append(s)
            fine += [f] if self.fine_group else []
        phase = (state.phase + x.shape[1]) % self.fine_group if self.fine_group else state.phase
        return self.norm_f(x), MambaState(tuple(layers), tuple(fine), phase)

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token per env: x (B, d) -> y (B, d). O(1) per call, whatever came before."""
        layers, fine = [], []
        for i, layer in enumerate(self.layers):
            x, s, f = layer.step(x, state.layers[i], state.fine[i] if self.fine_group else None, state.phase)
            layers.append(s)
            fine += [f] if self.fine_group else []
        phase = (state.phase + 1) % self.fine_group if self.fine_group else state.phase
        return self.norm_f(x), MambaState(tuple(layers), tuple(fine), phase)
