"""Triton kernels for `seqrl/kernels/conv.py`'s causal depthwise conv + SiLU (CUDA only; call them through it).

Dimension letters: B batch, T steps, E channels, W taps, G steps per group (T for the whole sequence).

A program owns one batch row, BLOCK_T steps and BLOCK_E channels, channels along the fast axis (x is read
channels last, as a projection writes it). Forward: per tap k, a load of x shifted s = W-1-k steps back
(masked to zero where that leaves the step's group; the neighbours' rows come from cache), a multiply-add in
float32 (float64 for float64 inputs), then the bias and SiLU: one read of x, one write of u.

Backward: with a = the pre-activation and g = du silu'(a), dx_t = sum_s weight[:, W-1-s] g_{t+s} over the s
that stay in t's group. A program recomputes a and g at its steps shifted by each s (W x W shifted loads of x,
from cache), so nothing but dx is written per step. Its shares of dweight[:, k] = sum_t g_t x_{t-(W-1-k)} and
dbias = sum_t g_t go to a (programs, W + 1, E) float32 buffer, summed afterwards (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T, BLOCK_E, WARPS = 32, 64, 4


@triton.jit
def _pre(x_row, w_ptr, bias, t, q, e, tm, em, T, sxt, sxe,
         W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    """The pre-activation at steps t (q: t's position in its group), masked to the taps inside the group."""
    a = tl.zeros((BLOCK_T, BLOCK_E), ACC) + bias[None, :]
    for k in tl.static_range(W):
        s = W - 1 - k
        ok = tm & (q >= s) & (t < T)
        xv = tl.load(x_row + (t - s)[:, None] * sxt + e[None, :] * sxe, mask=ok[:, None] & em[None, :], other=0.0)
        wk = tl.load(w_ptr + e * W + k, mask=em, other=0.0).to(ACC)
        a += xv.to(ACC) * wk[None, :]
    return a


@triton.jit
def _conv_fwd(x_ptr, w_ptr, b_ptr, y_ptr, T, E, G, sxb, sxt, sxe,
              W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    pb, pt, pe = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pt * BLOCK_T + tl.arange(0, BLOCK_T)
    e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    tm, em = t < T, e < E
    bias = tl.load(b_ptr + e, mask=em, other=0.0).to(ACC)
    a = _pre(x_ptr + pb.to(tl.int64) * sxb, w_ptr, bias, t, t % G, e, tm, em, T, sxt, sxe, W, BLOCK_T, BLOCK_E, ACC)
    u = a / (1.0 + tl.exp(-a))
    y_row = y_ptr + pb.to(tl.int64) * T * E
    tl.store(y_row + t[:, None] * E + e[None, :], u.to(y_ptr.dtype.element_ty), mask=tm[:, None] & em[None, :])


@triton.jit
def _conv_bwd(x_ptr, w_ptr, b_ptr, gy_ptr, dx_ptr, part_ptr, T, E, G, sxb, sxt, sxe, sgb, sgt, sge,
              W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    pb, pt, pe = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pt * BLOCK_T + tl.arange(0, BLOCK_T)
    e = pe * BLOCK_E + tl.arange(0, BLOCK_E)
    tm, em = t < T, e < E
    p = t % G
    bias = tl.load(b_ptr + e, mask=em, other=0.0).to(ACC)
    x_row = x_ptr + pb.to(tl.int64) * sxb
    gy_row = gy_ptr + pb.to(tl.int64) * sgb
    dx = tl.zeros((BLOCK_T, BLOCK_E), ACC)
    for s in tl.static_range(W):  # steps r = t + s read x_t through tap W-1-s
        r = t + s
        ok = tm & (r < T) & (p + s < G)
        a = _pre(x_row, w_ptr, bias, r, p + s, e, ok, em, T, sxt, sxe, W, BLOCK_T, BLOCK_E, ACC)
        gy = tl.load(gy_row + r[:, None] * sgt + e[None, :] * sge, mask=ok[:, None] & em[None, :], other=0.0)
        sig = 1.0 / (1.0 + tl.exp(-a))
        g = gy.to(ACC) * sig * (1.0 + a * (1.0 - sig))  # zero where the step is out of range or group
        wk = tl.load(w_ptr + e * W + (W - 1 - s), mask=em, other=0.0).to(ACC)
        dx += g * wk[None, :]
        if s == 0:  # this program's shares of dweight and dbias, from its own steps
            part = part_ptr + ((pb * tl.num_programs(1) + pt).to(tl.int64) * (W + 1)) * E
            for k in tl.static_range(W):
                sk = W - 1 - k
                okk = tm & (p >= sk)
                xv = tl.load(x_row + (t - sk)[:, None] * sxt + e[None, :] * sxe, mask=okk[:, None] & em[None, :],
                             other=0.0)
                tl.store(part + k * E + e, tl.sum(g * xv.to(ACC), axis=0), mask=em)
            tl.store(part + W * E + e, tl.sum(g, axis=0), mask=em)
    dx_row = dx_ptr + pb.to(tl.int64) * T * E
    tl.store(dx_row + t[:, None] * E + e[None, :], dx.to(dx_ptr.dtype.element_ty), mask=tm[:, None] & em[None, :])


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


class _CausalConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, group):
        B, T, E = x.shape
        W = weight.shape[1]
        weight, bias = weight.contiguous(), bias.contiguous()
        y = torch.empty((B, T, E), device=x.device, dtype=x.dtype)
        G = group or T
        if y.numel():
            grid = (B, triton.cdiv(T, BLOCK_T), triton.cdiv(E, BLOCK_E))
            _conv_fwd[grid](x, weight, bias, y, T, E, G, *x.stride(), W=W, BLOCK_T=BLOCK_T, BLOCK_E=BLOCK_E,
                            ACC=_acc(x.dtype), num_warps=WARPS)
        ctx.save_for_backward(x, weight, bias)
        ctx.G = G
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias = ctx.saved_tensors
        B, T, E = x.shape
        W = weight.shape[1]
        acc = torch.promote_types(x.dtype, torch.float32)
        grid = (B, triton.cdiv(T, BLOCK_T), triton.cdiv(E, BLOCK_E))
        dx = torch.empty((B, T, E), device=x.device, dtype=x.dtype)
        part = torch.empty((grid[0] * grid[1], W + 1, E), device=x.device, dtype=acc)
        if dx.numel():
            _conv_bwd[grid](x, weight, bias, gy, dx, part, T, E, ctx.G, *x.stride(), *gy.stride(),
                            W=W, BLOCK_T=BLOCK_T, BLOCK_E=BLOCK_E, ACC=_acc(x.dtype), num_warps=WARPS)
        sums = part.sum(0)  # (W + 1, E)
        return dx, sums[:W].t().to(weight.dtype), sums[W].to(bias.dtype), None


def causal_conv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, group: int) -> torch.Tensor:
    """`seqrl.kernels.conv.causal_conv_silu` on CUDA (arguments checked there)."""
    return _CausalConvSilu.apply(x, weight, bias, group)
