"""S4-family layers with a diagonal complex state, and a backbone of S4WM-shaped blocks:

- S4D (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and Initialization of Diagonal State Space Models",
  arXiv:2206.11893): one single-input single-output SSM per channel, N/2 complex modes each.
- S5 (Smith, Warrington, Linderman 2023, "Simplified State Space Layers for Sequence Modeling", arXiv:2208.04933):
  one multi-input multi-output SSM, P/2 complex modes shared by all channels.
- Blocks as in S4WM (Deng, Park, Ahn 2023, "Facing Off World Model Backbones: RNNs, Transformers, and S4",
  arXiv:2307.02064).

Dimension letters: B batch (or envs), T steps in a segment, H model width (channels), N state size per channel
(S4D), P state size shared by the channels (S5), M complex modes of one layer's state: H N/2 (S4D) or P/2 (S5).

One layer is a linear time-invariant SSM, u_t in R^H:

    continuous:   h' = A h + B u,   y = C h + D u          A diagonal complex, Re(A) < 0
    zoh:          a = exp(dt A),                 b = (exp(dt A) - 1) / A * B
    bilinear:     a = (1 + dt A/2) / (1 - dt A/2),   b = dt / (1 - dt A/2) * B
    recurrence:   h_t = a h_{t-1} + b u_t,      y_t = 2 Re(C h_t) + D u_t

S4D: A, B, C (H, N/2), dt (H,), x_t = b * u_t per channel, y = 2 Re(sum_n C h). S5: A, dt (P/2,), B (P/2, H),
C (H, P/2), x_t = b @ u_t, y = 2 Re(C @ h). Modes of a real system come in conjugate pairs; one of each pair is
kept and 2 Re(.) adds the other (conjugate symmetry), which halves the state. Re(A) = -exp(log_neg_A_re) stays
negative whatever training does, so |a| < 1 for dt > 0 (zoh and bilinear alike): the recurrence cannot blow up.
dt = exp(log_dt). All parameters are real tensors (complex ones as (..., 2) real/imaginary pairs), so
`module.to(dtype)` and the optimisers treat them as any other.

Initialisation (each paper's, and its reference code where the paper leaves a choice):
- S4D: A = -1/2 + i pi n ("lin", S4D-Lin) or -1/2 + i (N/pi) (N/(2n+1) - 1) ("inv", S4D-Inv), n < N/2, the same for
  every channel; B = 1; C complex normal of variance 1; D standard normal; log dt uniform in [log dt_min,
  log dt_max] per channel.
- S5: A the eigenvalues of HiPPO-N, the normal part of HiPPO-LegS (every real part -1/2), one of each conjugate
  pair; with `blocks` J > 1 the block-diagonal variant, J copies of HiPPO-N of size P/J. B = V^-1 B', C = C' V with
  V the (kept) eigenvectors, B' (P, H) real and C' (H, P) complex lecun-normal as S5's code draws them; D standard
  normal; log dt uniform per state.

Sequences (`forward`): episode resets enter the recurrence itself: at a step where a new episode starts the decay
is 0, so the state restarts from that step's input, inside the one scan. Training runs through
`seqrl.kernels.linear_scan` (on the CPU its sequential path over time-major tensors, which this module builds
time-major so no copy is made); S5 on CUDA through its Triton kernel. S4D on CUDA runs in chunks of CHUNK steps
instead (`_chunked`): a masked convolution inside each chunk, the chunks' end states carried by `linear_scan` over
chunks, so no per-step state exists (with the scan's per-step states, (T, B, H N/2) complex, the GPU world model's
update peaked at 4.3 GB at 4 x 1,024 steps, width 256, d_state 64, on an H100); it reads no reset flag on the host,
so a CUDA graph holds it. On the CPU, a sequence of `fft_min_len` steps or more runs as FFT convolutions instead
(not on CUDA: unmeasured there, and planning it needs the reset flags on the host) (S4D: with the kernel K_k = 2
Re(sum_n C b a^k) per channel, from a^k = exp(k log a), as S4D does; S5: per mode, of the inputs b @ u with a^k).
Episode starts cut each row into segments, each a convolution from a zero state (the decay 0 at
its first step cuts it off from the steps before): the segments are gathered into buckets of power-of-two lengths
(so padding at most doubles a segment), each bucket convolved at its own FFT length, and the outputs scattered
back; the incoming state reaches each row's first segment (y_t gains 2 Re(C a^(t+1) h0)), and the final state is
that of each row's last segment, from the same powers. It gives the scan's answer, resets or not
(tests/test_s4.py), and is faster from about 16 steps at the backbone's default sizes without resets; with
episode starts after the first step it also needs FFT_RESET_MIN_LEN steps (16 for S4D, 256 for S5, whose scan is
cheap); see FFT_RESET_MIN_LEN for what was measured (experiments/bench_s4_cpu.py). `step` is the exact
recurrence for one step, through `seqrl.kernels.linear_step`. A layer's state is its h, (B, M) complex, held as
(B, M, 2) real/imaginary pairs in float32 (float64 in a float64 model) so that a state holds floating tensors of
the model's dtype as every backbone's does; `torch.view_as_complex` reads it as complex64 (complex128).

`S4Backbone` stacks S4WM blocks (pre-norm, LayerNorm; GELU after the SSM as in S4's layer):

    x <- x + Dropout(Linear(GELU(S4(LN(x)))))      twice, two S4 layers
    x <- x + Dropout(MLP(LN(x)))                   MLP: Linear(H, d_ff), GELU, Linear(d_ff, H)

and a final LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.kernels.scan import linear_scan, linear_step
from seqrl.nn.norm import LayerNorm

Kind = Literal["s4d", "s5"]
Discretization = Literal["zoh", "bilinear"]
S4DInit = Literal["lin", "inv"]
FFT_MIN_LEN = 16  # steps from which a segment without resets inside runs as an FFT convolution on the CPU
CHUNK = 16  # S4D on CUDA: steps per chunk of the chunked form (`S4Layer._chunked`)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the SSM computes in for inputs of `dtype`: float32, or float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


# ------------------------------------------------------------------------------------------ init
def hippo_n(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (n,) and eigenvectors (n, n) (columns) of HiPPO-N, the normal part of HiPPO-LegS, in
    complex128, by increasing imaginary part.

    HiPPO-LegS is A_ij = -sqrt(2i+1) sqrt(2j+1) (i > j), -(i+1) (i = j), 0 (i < j). Adding p p^T with
    p_i = sqrt(i + 1/2) (its rank-one correction) leaves S = -1/2 I + K, K skew-symmetric; K = V diag(i w) V^H with
    w, V the eigen-decomposition of the Hermitian -iK, so S = V diag(-1/2 + i w) V^H. For even n, w comes in +/-
    pairs: the eigenvalues are conjugate pairs."""
    i = torch.arange(n, dtype=torch.float64)
    q = torch.sqrt(2 * i + 1)
    legs = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(i))
    p = torch.sqrt(i + 0.5)
    skew = legs + p[:, None] * p[None, :] + 0.5 * torch.eye(n, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    return torch.complex(torch.full_like(w, -0.5), w), V


def s4d_A(n_state: int, init: S4DInit) -> torch.Tensor:
    """The N/2 diagonal A of S4D (complex128): S4D-Lin -1/2 + i pi n, or S4D-Inv -1/2 + i (N/pi)(N/(2n+1) - 1)."""
    n = torch.arange(n_state // 2, dtype=torch.float64)
    imag = math.pi * n if init == "lin" else n_state / math.pi * (n_state / (2 * n + 1) - 1)
    return torch.complex(torch.full_like(n, -0.5), imag)


def _lecun_normal(*shape: int, fan_in: int) -> torch.Tensor:
    """Truncated normal (at 2 standard deviations) of standard deviation 1/sqrt(fan_in), as JAX's lecun_normal."""
    std = fan_in ** -0.5 / 0.87962566103423978  # the truncation's shrink of the standard deviation, undone
    return nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


def _pairs(z: torch.Tensor) -> nn.Parameter:
    """A float32 parameter of real/imaginary pairs (..., 2) from a complex tensor."""
    return nn.Parameter(torch.view_as_real(z.to(torch.complex64)).clone())


# ------------------------------------------------------------------------------- per-channel maps
# S4D maps each channel's input to its N/2 modes (x = u b) and reads them back (y = 2 Re(C h)): per channel h, an
# outer product and a dot product with K = N real/imaginary pairs, on (I, H, K) tensors of I = T B rows. Autograd
# through broadcasting or einsum makes (I, H, K) temporaries or copies for these; as batched matrix products over
# H on strided views they make none (about 2x faster forward + backward at B=8, T=1024, H=64, N=64 on the CPU).
def _dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_k x[i, h, k] w[h, k]: x (I, H, K), w (H, K) -> (I, H). As rows w_h times x_h^T: the same product with x_h
    on the right-hand side (x_h w_h) ran 5x slower here (torch 2.13, 2 threads)."""
    return torch.bmm(w[:, None, :], x.permute(1, 2, 0))[:, 0].T


def _wsum(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_i g[i, h] x[i, h, k]: x (I, H, K), g (I, H) -> (H, K)."""
    return torch.bmm(g.T[:, None, :], x.transpose(0, 1))[:, 0]


class _ChannelDot(torch.autograd.Function):
    """y[i, h] = sum_k x[i, h, k] w[h, k]."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return _dot(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g[..., None] * w, _wsum(x, g)


class _ChannelOuter(torch.autograd.Function):
    """x[i, h, k] = u[i, h] w[h, k]."""

    @staticmethod
    def forward(ctx, u, w):
        ctx.save_for_backward(u, w)
        return u[..., None] * w

    @staticmethod
    def backward(ctx, g):
        u, w = ctx.saved_tensors
        return _dot(g, w), _wsum(g, u)


# ----------------------------------------------------------------------------------- segments
# Steps from which a sequence with episode starts after its first step runs as FFT convolutions over its episode
# segments on the CPU (and from the layer's fft_min_len). Measured (experiments/bench_s4_cpu.py, 1 thread, B=8,
# H=64, d_state 64; docs/world_model.md): S4D's FFT path was ahead of its scan at every length tried (64 to 1,024
# steps, an episode start every ~50) and, at 1,024 steps, at every rate of episode starts tried (every 1 to 50
# steps); its threshold is fft_min_len's, not measured below 64. S5's scan is cheap (32 modes): its FFT path is
# ahead from about 256 steps.
FFT_RESET_MIN_LEN = {"s4d": FFT_MIN_LEN, "s5": 256}


@dataclass
class _Segments:
    """The episode segments of (B, T) rows for the FFT path: a segment starts at step 0 and at every episode start,
    and runs to the next one. They are bucketed by length: a segment of L steps goes to the bucket of length
    2^ceil(log2 L) (capped at T), its steps first and zeros after, so that padding at most doubles a segment and
    each bucket runs its FFTs at its own length. buckets: (length lb, segments in it, indices (count lb,) into the
    flattened (B T) steps, B T for padding); inv (B T,): where each step lands in the buckets' outputs laid end to
    end; first (B,): the steps of each row's first segment (those that see the incoming state); last (B,): the
    first step of each row's last segment. Rows without episode starts after step 0 (`whole`) are one segment
    each: buckets, inv, first and last None."""

    longest: int  # the longest bucket's length
    first_max: int
    last_min: int
    n_segments: int
    buckets: list[tuple[int, int, torch.Tensor]] | None = None
    inv: torch.Tensor | None = None
    first: torch.Tensor | None = None
    last: torch.Tensor | None = None

    @staticmethod
    def whole(batch: int, T: int) -> _Segments:
        return _Segments(T, T, 0, batch)


def _segments(reset: torch.Tensor) -> _Segments:
    """The segments of reset (B, T) bool on the CPU, planned in numpy: on (B, T) flags its small operations cost a
    fraction of torch's (about 0.2 ms a plan at B=8, T=1024, against hundreds of ms for the layer's FFTs)."""
    Bsz, T = reset.shape
    r = reset.cpu().numpy().copy()
    r[:, 0] = True
    starts = np.flatnonzero(r)  # each segment's first step in the flattened (B T) steps, in order
    length = np.diff(starts, append=Bsz * T)  # a row's last segment ends at the row's end
    t0 = starts % T
    heads = np.flatnonzero(t0 == 0)  # each row's first segment, in row order
    first = length[heads]  # steps of the first segment: those that see the incoming state
    last = t0[np.append(heads[1:], len(starts)) - 1]  # the first step of each row's last segment
    bucket = np.minimum(1 << np.ceil(np.log2(length)).astype(np.int64), T)
    buckets, src, dst, base = [], [], [], 0
    for lb in np.unique(bucket).tolist():
        seg = np.flatnonzero(bucket == lb)
        pos = starts[seg, None] + np.arange(lb)
        valid = np.arange(lb) < length[seg, None]
        buckets.append((lb, len(seg), torch.from_numpy(np.where(valid, pos, Bsz * T).ravel())))
        dst.append(pos[valid])
        src.append(base + np.flatnonzero(valid))
        base += len(seg) * lb
    inv = np.empty(Bsz * T, dtype=np.int64)
    inv[np.concatenate(dst)] = np.concatenate(src)
    first, last, inv = (torch.from_numpy(x) for x in (first, last, inv))
    return _Segments(buckets[-1][0], int(first.max()), int(last.min()), len(starts), buckets, inv, first, last)


def _convolve(x: torch.Tensor, kernel: torch.Tensor, plan: _Segments) -> torch.Tensor:
    """Per segment of `plan`, from a zero state, the causal convolution along time of x (B, T, F) with kernel
    (F, >= plan.longest): out_t = sum_s kernel[t - s] x_s over the steps s <= t of t's segment. Real x and kernel
    by rfft, complex by fft, zero-padded to twice the length (a linear, not circular, convolution)."""
    fft, ifft = (torch.fft.fft, torch.fft.ifft) if x.is_complex() else (torch.fft.rfft, torch.fft.irfft)
    Bsz, T, F = x.shape
    if plan.buckets is None:
        n = 2 * T
        return ifft(fft(x.transpose(1, 2), n) * fft(kernel[:, :T], n), n)[..., :T].transpose(1, 2)
    xt = torch.cat([x.reshape(Bsz * T, F).T, x.new_zeros(F, 1)], 1)  # (F, B T + 1): the last column pads
    outs = []
    for lb, count, idx in plan.buckets:
        n = 2 * lb
        xb = xt.index_select(1, idx).view(F, count, lb)
        outs.append(ifft(fft(xb, n) * fft(kernel[:, None, :lb], n), n)[..., :lb].reshape(F, count * lb))
    return torch.cat(outs, 1).index_select(1, plan.inv).T.view(Bsz, T, F)


def _add_first(y: torch.Tensor, y0: torch.Tensor, plan: _Segments, t: torch.Tensor) -> torch.Tensor:
    """y (B, T, F) plus y0 (B, nf, F) on each row's first segment (nf = its longest)."""
    nf = y0.shape[1]
    if plan.first is not None:
        y0 = y0 * (t[:nf] < plan.first[:, None])[..., None]
    return y + y0 if nf == y.shape[1] else torch.cat([y[:, :nf] + y0, y[:, nf:]], 1)


# ----------------------------------------------------------------------------------------- layer
class S4Layer(nn.Module):
    """One diagonal SSM (module docstring): (B, T, H) -> (B, T, H), with a recurrent state (B, M, 2)."""

    def __init__(self, d_model: int, d_state: int = 64, kind: Kind = "s4d", discretization: Discretization = "zoh",
                 s4d_init: S4DInit = "lin", blocks: int = 1, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 fft_min_len: int | None = FFT_MIN_LEN):
        """d_state: N per channel (S4D) or P shared (S5), even; the state keeps half as complex modes.
        blocks: S5's block-diagonal init, P/blocks even. fft_min_len: None never takes the FFT path."""
        super().__init__()
        if kind not in ("s4d", "s5") or discretization not in ("zoh", "bilinear") or s4d_init not in ("lin", "inv"):
            raise ValueError(f"S4Layer: kind {kind!r} must be 's4d' or 's5', discretization {discretization!r} "
                             f"'zoh' or 'bilinear', s4d_init {s4d_init!r} 'lin' or 'inv'")
        if d_state < 2 or d_state % 2 or blocks < 1 or (kind == "s5" and d_state % (2 * blocks)):
            raise ValueError(f"S4Layer: d_state={d_state} must be even and >= 2 (for s5, a multiple of 2 * blocks = "
                             f"{2 * blocks}, each block an even HiPPO-N)")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4Layer: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        H = d_model
        self.d_model, self.d_state, self.kind, self.discretization = H, d_state, kind, discretization
        self.fft_min_len = fft_min_len
        half = d_state // 2
        self.n_modes = H * half if kind == "s4d" else half  # M
        n_dt = H if kind == "s4d" else half
        log_dt = torch.rand(n_dt, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        if kind == "s4d":
            A = s4d_A(d_state, s4d_init).repeat(H, 1)  # (H, N/2)
            B = torch.ones(H, half, dtype=torch.complex128)
            C = torch.randn(H, half, dtype=torch.complex128)  # complex normal, variance 1 (S4D's code)
        else:
            bs = d_state // blocks  # HiPPO-N block size
            lam, V = hippo_n(bs)
            lam, V = lam[: bs // 2], V[:, : bs // 2]  # one of each conjugate pair, as S5's code keeps
            A = lam.repeat(blocks)  # (P/2,)
            V = torch.block_diag(*[V] * blocks)  # (P, P/2)
            # B' (P, H) and C' (H, P) lecun-normal with fan-in P: JAX's lecun_normal on S5's (P, H) and (1, P, 2)
            # shapes takes the second-last axis as fan-in
            B = V.conj().T @ _lecun_normal(d_state, H, fan_in=d_state).to(torch.complex128)  # (P/2, H)
            C = torch.complex(_lecun_normal(H, d_state, fan_in=d_state), _lecun_normal(H, d_state, fan_in=d_state)) @ V
        self.log_dt = nn.Parameter(log_dt.float())
        self.log_neg_A_re = nn.Parameter(torch.log(-A.real).float())  # Re(A) = -exp(.) < 0
        self.A_im = nn.Parameter(A.imag.float())
        self.B, self.C = _pairs(B), _pairs(C)
        self.D = nn.Parameter(torch.randn(H))
        # The SSM's own parameters take no weight decay (S4 and S5 exclude them; S4 and S5 also give them a smaller
        # learning rate, which the trainer's groups do not offer); D marked as Mamba's is; C is a plain weight.
        for p in (self.log_dt, self.log_neg_A_re, self.A_im, self.B, self.D):
            p._no_weight_decay = True

    # ----------------------------------------------------------------------------- parameters
    def A(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The continuous-time A, complex: (H, N/2) for S4D, (P/2,) for S5."""
        acc = _acc(dtype)
        return torch.complex(-torch.exp(self.log_neg_A_re.to(acc)), self.A_im.to(acc))

    def dt(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Step sizes, real: (H, 1) for S4D (one per channel), (P/2,) for S5 (one per mode)."""
        dt = torch.exp(self.log_dt.to(_acc(dtype)))
        return dt[:, None] if self.kind == "s4d" else dt

    def discrete(self, dtype: torch.dtype = torch.float32):
        """(log a, a, b, C): the decay a, its log (a^k = exp(k log a)) and the input map b, discretised; C.
        a, log a: (H, N/2) or (P/2,); b: (H, N/2) or (P/2, H); C: (H, N/2) or (H, P/2). Complex."""
        A, dt = self.A(dtype), self.dt(dtype)
        Bc, C = (torch.view_as_complex(p.to(_acc(dtype))) for p in (self.B, self.C))
        dtA = dt * A
        if self.discretization == "zoh":
            log_a, gain = dtA, torch.expm1(dtA) / A  # expm1: exp(dt A) - 1 loses digits for small dt A
        else:
            log_a, gain = 2 * torch.atanh(dtA / 2), dt / (1 - dtA / 2)  # log((1 + z) / (1 - z)) = 2 atanh(z)
        a = torch.exp(log_a) if self.discretization == "zoh" else (1 + dtA / 2) / (1 - dtA / 2)
        b = gain * Bc if self.kind == "s4d" else gain[:, None] * Bc
        return log_a, a, b, C

    # ------------------------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Zeros (B, M, 2): the complex state as real/imaginary pairs, float32 (float64 in a float64 model)."""
        return torch.zeros(batch, self.n_modes, 2, device=device, dtype=_acc(dtype))

    def _state_in(self, state: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        if state is None:
            return None
        if state.shape != (batch, self.n_modes, 2):
            raise ValueError(f"S4Layer: state must be (B, M, 2) = ({batch}, {self.n_modes}, 2), "
                             f"got {tuple(state.shape)}")
        return torch.view_as_complex(state.to(_acc(dtype)).contiguous())  # (B, M)

    def _check(self, u: torch.Tensor, reset: torch.Tensor | None) -> None:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"S4Layer: input must be (B, T, H) with H = {self.d_model}, got {tuple(u.shape)}")
        if reset is not None and (reset.shape != u.shape[:2] or reset.dtype != torch.bool):
            raise ValueError(f"S4Layer: reset must be a bool tensor (B, T) = {tuple(u.shape[:2])}, got "
                             f"{reset.dtype} {tuple(reset.shape)}")

    # ---------------------------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor, state: torch.Tensor | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, T, H) -> y (B, T, H) in u's dtype, and the state after the segment (B, M, 2).
        state: None for zeros. reset (B, T) bool: a new episode starts at that step (its decay is 0)."""
        self._check(u, reset)
        Bsz, T, H = u.shape
        h0 = self._state_in(state, Bsz, u.dtype)
        if T == 0:
            return u.new_zeros(Bsz, 0, H), self.initial_state(Bsz, u.device, u.dtype) if state is None else state
        with torch.autocast(u.device.type, enabled=False):  # the SSM in float32 (float64) under AMP as well
            log_a, a, b, C = self.discrete(u.dtype)
            uf = u.to(_acc(u.dtype))
            plan = self._fft_plan(u, reset)
            if plan is not None:
                if reset is not None and h0 is not None:  # an episode starting at the first step sees no state
                    h0 = h0 * (~reset[:, 0, None]).to(h0.real.dtype)
                y, h = self._fft(uf, h0, log_a, b, C, plan)
            elif self.kind == "s4d" and u.device.type == "cuda":
                y, h = self._chunked(uf, h0, log_a, b, C, reset)
            else:
                y, h = self._scan(uf, h0, a, b, C, reset)
            y = y + self.D.to(uf.dtype) * uf
        return y.to(u.dtype), torch.view_as_real(h)

    def _fft_ok(self, u: torch.Tensor, reset: torch.Tensor | None) -> bool:
        """Whether `forward` takes the FFT path for these inputs (a plan for it exists)."""
        return self._fft_plan(u, reset) is not None

    def _fft_plan(self, u: torch.Tensor, reset: torch.Tensor | None) -> _Segments | None:
        """The FFT path's episode segments, or None for the scan: on the CPU only, from `fft_min_len` steps, and
        with episode starts after the first step from FFT_RESET_MIN_LEN[kind] steps as well."""
        Bsz, T = u.shape[:2]
        if self.fft_min_len is None or u.device.type != "cpu" or T < self.fft_min_len:
            return None
        if reset is None or not bool(reset[:, 1:].any()):
            return _Segments.whole(Bsz, T)
        return _segments(reset) if T >= FFT_RESET_MIN_LEN[self.kind] else None

    def _scan(self, u, h0, a, b, C, reset):
        """The recurrence through linear_scan, everything time-major (T, B, M). Returns y (B, T, H), h_T (B, M).
        Inputs and decays are built as real/imaginary pairs: PyTorch's complex products are slower on the CPU."""
        Bsz, T, H = u.shape
        ut = u.transpose(0, 1)  # (T, B, H)
        if self.kind == "s4d":
            x = _ChannelOuter.apply(ut.reshape(T * Bsz, H), torch.view_as_real(b).flatten(1))  # (T B, H, N)
            x = x.view(T, Bsz, self.n_modes, 2)  # (T, B, H N/2, 2)
        else:
            x = (ut @ torch.view_as_real(b.T).flatten(1)).view(T, Bsz, self.n_modes, 2)  # (T, B, P/2, 2)
        a = torch.view_as_real(a).reshape(-1, 2)  # (M, 2)
        if reset is None:
            a = a.expand(T, Bsz, self.n_modes, 2)
        else:  # a new episode: decay 0, the state restarts from this step's input
            a = a * (~reset).T[..., None, None].to(u.dtype)
        a, x = torch.view_as_complex(a), torch.view_as_complex(x)
        hs = linear_scan(a.permute(1, 2, 0), x.permute(1, 2, 0), h0).permute(2, 0, 1)  # (T, B, M), no copy on CPU
        return self._read(hs, C).transpose(0, 1), hs[-1].clone()  # clone: a view would keep all of hs alive

    def _chunked(self, u, h0, log_a, b, C, reset, chunk: int = CHUNK):
        """S4D by chunks of c steps, with no per-step state in memory (the scan's form keeps (T, B, H N/2) complex
        states: see the module docstring). Per chunk, with s_t the number of episode
        starts in the chunk up to t (a start cuts the state off from the steps before it):
          y_t = sum over s <= t in the chunk with s_s = s_t of K_(t-s) u_s      K_k = 2 Re(sum_n C b a^k)
              + 2 Re(sum_n C a^(t - t0 + 1) S)  where s_t = 0                    S: the state before the chunk
        and the chunks' end states follow S_j = a^c S_(j-1) [no start in chunk j] + E_j, E_j = sum over s with
        s_s = s_(c-1) of a^(c-1-s) b u_s, a linear scan over chunks (`linear_scan`). Everything is a tensor
        operation, so a CUDA graph can hold it. Returns y (B, T, H), h_T (B, M)."""
        Bsz, T, H = u.shape
        c = min(chunk, T)
        J, pad = -(-T // c), -T % c
        half = log_a.shape[1]
        uu = F.pad(u, (0, 0, 0, pad)).view(Bsz, J, c, H)  # padding: no input, no episode start
        starts = torch.zeros(Bsz, T, dtype=torch.long, device=u.device) if reset is None else reset.long()
        seg = F.pad(starts, (0, pad)).view(Bsz, J, c).cumsum(2)  # starts in the chunk up to each step
        k = torch.arange(c + 1, device=u.device, dtype=u.dtype)
        powers = torch.exp(log_a[..., None] * k)  # a^0 .. a^c, (H, N/2, c+1)
        K = 2 * torch.einsum("hn,hnk->hk", C * b, powers[..., :c]).real  # (H, c)
        y = uu * K[:, 0]
        for d in range(1, c):  # lag d: steps s = t - d of the same episode
            same = (seg[:, :, d:] == seg[:, :, :-d]).to(u.dtype)[..., None]
            y = y + F.pad(uu[:, :, :-d] * same * K[:, d], (0, 0, d, 0))
        last = (seg == seg[:, :, -1:]).to(u.dtype)[..., None]  # steps whose input reaches the chunk's end
        E = b * torch.einsum("bjsh,hns->bjhn", (uu * last).to(powers.dtype), powers[..., :c].flip(-1))
        decay = powers[..., c] * (seg[:, :, -1] == 0).to(u.dtype)[..., None, None]  # (B, J, H, N/2)
        h_init = torch.zeros(Bsz, H * half, dtype=powers.dtype, device=u.device) if h0 is None else h0
        ends = linear_scan(decay.flatten(2).transpose(1, 2), E.flatten(2).transpose(1, 2), h_init)  # (B, M, J)
        before = torch.cat([h_init[..., None], ends[..., :-1]], -1).transpose(1, 2).view(Bsz, J, H, half)
        first = (seg == 0).to(u.dtype)[..., None]  # steps the state before the chunk reaches
        y = y + 2 * torch.einsum("bjhn,hnt->bjth", before * C, powers[..., 1:]).real * first
        y = y.reshape(Bsz, J * c, H)[:, :T]
        if not pad:
            return y, ends[..., -1]
        n = c - pad  # the last chunk's real steps: the state after its step n - 1
        hT = (powers[..., n] * before[:, -1] * (seg[:, -1, n - 1] == 0).to(u.dtype)[:, None, None]
              + b * torch.einsum("bsh,hns->bhn", (uu[:, -1, :n] * last[:, -1, :n]).to(powers.dtype),
                                 powers[..., :n].flip(-1)))
        return y, hT.reshape(Bsz, H * half)

    def _read(self, h: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """2 Re(C h) for states h (..., M) complex -> (..., H) real: Re(C h) = Re(C) Re(h) - Im(C) Im(h), a real
        dot product of pairs."""
        W = torch.stack([C.real, -C.imag], -1)  # pairs as view_as_real lays them out: (H, N/2, 2) or (H, P/2, 2)
        hr = torch.view_as_real(h)  # (..., M, 2)
        if self.kind == "s4d":
            y = _ChannelDot.apply(hr.reshape(-1, self.d_model, hr.shape[-2] * 2 // self.d_model), W.flatten(1))
            return 2 * y.reshape(*h.shape[:-1], self.d_model)
        return 2 * hr.flatten(-2) @ W.flatten(1).T

    def _fft(self, u, h0, log_a, b, C, plan: _Segments):
        """The same outputs by FFT convolution, per episode segment of `plan` (the whole rows without episode
        starts after the first step). Each segment is a convolution from a zero state (`_convolve`); the incoming
        state reaches only the first segment of each row, where y_t gains 2 Re(C a^(t+1) h0); the final state is
        that of each row's last segment, sum_s a^(T-1-s) b u_s over its steps, plus a^T h0 for a row with a
        single segment. a^k = exp(k log a) for the k needed. Returns y (B, T, H), h_T (B, M).

        The powers are built from real exp, cos and sin and S4D's sums over modes are real contractions of
        real/imaginary pairs: PyTorch's complex exp and complex products run several times slower on the CPU."""
        Bsz, T, H = u.shape
        nf = plan.first_max if h0 is not None else 0  # steps whose outputs see h0; nf = T: a row has one segment
        kmax = max(plan.longest - 1, T - plan.last_min - 1, nf)
        k = torch.arange(kmax + 1, device=u.device, dtype=u.dtype)
        mag, phase = torch.exp(log_a.real[..., None] * k), log_a.imag[..., None] * k
        powers = torch.stack([mag * torch.cos(phase), mag * torch.sin(phase)], -1)  # a^0..a^kmax, (..., kmax+1, 2)
        t = torch.arange(T, device=u.device)
        if self.kind == "s4d":
            cb = C * b  # (H, N/2): K_k = 2 Re(sum_n cb_n a_n^k) = 2 sum_n Re(cb) Re(a^k) - Im(cb) Im(a^k)
            K = 2 * torch.einsum("hnc,hnkc->hk", torch.stack([cb.real, -cb.imag], -1), powers[..., :plan.longest, :])
            y = _convolve(u, K, plan)  # (B, T, H)
            if nf:
                ch0 = C * h0.view(Bsz, H, -1)
                y0 = 2 * torch.einsum("bhnc,hntc->bth", torch.stack([ch0.real, -ch0.imag], -1),
                                      powers[..., 1 : nf + 1, :])  # (B, nf, H)
                y = _add_first(y, y0, plan, t)
            m0 = plan.last_min  # the final state: sum over each row's last segment of a^(T-1-s) u_s, pairs
            us = u[:, m0:] if plan.last is None else u[:, m0:] * (t[m0:] >= plan.last[:, None])[..., None]
            s = torch.einsum("bjh,hnjc->bhnc", us.flip(1), powers[..., : T - m0, :])  # j = T-1-s: flip u, not a^j
            h = torch.view_as_complex(s.contiguous()) * b  # (B, H, N/2)
            if nf == T:
                hT = torch.view_as_complex(powers[..., T, :].contiguous()) * h0.view(Bsz, H, -1)
                h = h + (hT if plan.first is None else hT * (plan.first == T)[:, None, None])
            return y, h.reshape(Bsz, -1)
        powers = torch.view_as_complex(powers)  # (P/2, kmax+1)
        x = torch.complex(u @ b.real.T, u @ b.imag.T)  # (B, T, P/2)
        hs = _convolve(x, powers, plan)  # the states (B, T, P/2)
        if nf:
            hs = _add_first(hs, powers[:, 1 : nf + 1].T * h0[:, None, :], plan, t)
        return self._read(hs, C), hs[:, -1].clone()

    # ------------------------------------------------------------------------------------- step
    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: u (B, H) -> y (B, H) in u's dtype, and the new state (B, M, 2). The exact recurrence."""
        if u.dim() != 2 or u.shape[-1] != self.d_model:
            raise ValueError(f"S4Layer.step: input must be (B, H) with H = {self.d_model}, got {tuple(u.shape)}")
        Bsz = u.shape[0]
        h = self._state_in(state, Bsz, u.dtype)
        with torch.autocast(u.device.type, enabled=False):
            _, a, b, C = self.discrete(u.dtype)
            uf = u.to(_acc(u.dtype))
            x = (uf[..., None] * b).reshape(Bsz, -1) if self.kind == "s4d" else uf.to(b.dtype) @ b.T
            h = linear_step(h, a.reshape(-1).expand(Bsz, -1), x)
            y = self._read(h, C) + self.D.to(uf.dtype) * uf
        return y.to(u.dtype), torch.view_as_real(h)



# ---------------------------------------------------------------------------------------- backbone
@dataclass
class S4State:
    ssm: tuple[torch.Tensor, ...]  # (B, M, 2) per S4 layer, two per block in order: h as real/imaginary pairs


class S4Block(nn.Module):
    """S4WM's block: x + Dropout(Linear(GELU(S4(LN(x))))) twice, then x + Dropout(MLP(LN(x)))."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, **ssm):
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm(d_model) for _ in range(3))
        self.ssms = nn.ModuleList(S4Layer(d_model, **ssm) for _ in range(2))
        self.outs = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(2))
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, states, reset):
        new = []
        for norm, ssm, out, s in zip(self.norms, self.ssms, self.outs, states):
            y, s = ssm(norm(x), s, reset)
            x = x + self.drop(out(F.gelu(y)))
            new.append(s)
        return x + self.drop(self.mlp(self.norms[2](x))), new

    def step(self, x, states):
        new = []
        for norm, ssm, out, s in zip(self.norms, self.ssms, self.outs, states):
            y, s = ssm.step(norm(x), s)
            x = x + self.drop(out(F.gelu(y)))
            new.append(s)
        return x + self.drop(self.mlp(self.norms[2](x))), new


class S4Backbone(nn.Module):
    def __init__(self, d_model: int, n_layers: int, d_state: int = 64, kind: Kind = "s4d",
                 discretization: Discretization = "zoh", dropout: float = 0.0, d_ff: int | None = None,
                 s4d_init: S4DInit = "lin", blocks: int = 1, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 fft_min_len: int | None = FFT_MIN_LEN):
        """n_layers S4WM blocks (two S4 layers each) of width d_model. d_state: N per channel (s4d) or P shared
        (s5); d_ff: the MLP's hidden width (default 2 d_model, our choice); the rest as S4Layer."""
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        self.blocks = nn.ModuleList(
            S4Block(d_model, d_ff or 2 * d_model, dropout, d_state=d_state, kind=kind, discretization=discretization,
                    s4d_init=s4d_init, blocks=blocks, dt_min=dt_min, dt_max=dt_max, fft_min_len=fft_min_len)
            for _ in range(n_layers))
        self.norm_f = LayerNorm(d_model)

    def _layers(self):
        return [ssm for block in self.blocks for ssm in block.ssms]

    def initial_state(self, batch: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> S4State:
        return S4State(tuple(l.initial_state(batch, device, dtype) for l in self._layers()))

    @staticmethod
    def reset(state: S4State, done: torch.Tensor) -> S4State:
        """Zero the state of the envs where `done` (B,) is True: their next step starts an episode."""
        return S4State(tuple(s * (~done).to(s.dtype)[:, None, None] for s in state.ssm))

    def forward(self, x: torch.Tensor, state: S4State | None = None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, S4State]:
        """x (B, T, d) -> y (B, T, d) and the state after the segment. state: None for a fresh episode.
        reset (B, T) bool: True where a new episode starts at that step (inside the scan, no cut)."""
        states = [None] * 2 * self.n_layers if state is None else list(state.ssm)
        new = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, states[2 * i : 2 * i + 2], reset)
            new += s
        return self.norm_f(x), S4State(tuple(new))

    def step(self, x: torch.Tensor, state: S4State) -> tuple[torch.Tensor, S4State]:
        """One step per env: x (B, d) -> y (B, d). O(1) per call."""
        new = []
        for i, block in enumerate(self.blocks):
            x, s = block.step(x, state.ssm[2 * i : 2 * i + 2])
            new += s
        return self.norm_f(x), S4State(tuple(new))
