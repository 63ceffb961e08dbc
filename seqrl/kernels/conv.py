"""Mamba's causal depthwise conv and SiLU, from a zero left context: the one entry point, whatever the device.

Dimension letters: B batch, T steps, E channels, W taps, g steps per group.

    u_t = silu(bias + sum_k weight[:, k] x_{t - (W-1-k)})

over the taps that stay inside t's group: the whole sequence (group 0, Mamba's mixer over a training window or
a fresh segment), or each group of g consecutive steps alone (Decision Mamba's fine-grained branch). x is
(B, T, E) channels last, as a projection gives it (any strides, e.g. half of a wider tensor); u comes back as a
new (B, T, E) tensor in x's dtype; sums are taken in float32 (float64 for float64 inputs).

Paths, picked by the inputs' device:

- CUDA: the Triton kernels of `seqrl/kernels/triton_conv.py`, one for the forward and one for the backward
  (recomputing the pre-activation; the weight and bias gradients as per-program shares summed afterwards). In
  PyTorch the same took a transposed copy, a cat or pad, cuDNN's depthwise conv (whose weight gradient is slow
  at many short sequences), the SiLU and a copy back, each a kernel, forward and backward. Without Triton it
  falls back to the PyTorch path with a warning (`KernelFallbackWarning`, once), as the scans do.
- CPU (any other device): PyTorch's depthwise `conv1d` over the whole sequence; for groups, one strided
  multiply-add per tap (`grouped_causal_conv`).

A segment that continues from a carried conv window (acting, truncated BPTT) is not this function's: the mixer
runs `conv1d` over the window and the segment there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrl.kernels import scan


class _GroupedCausalConv(torch.autograd.Function):
    """`grouped_causal_conv`, one strided multiply-add per tap. PyTorch's depthwise conv1d over B*T/g
    sequences of g steps (an earlier form) computed its weight gradient with a kernel that took 0.33 ms a
    call on an H100 at Decision Mamba's shapes."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        acc = torch.promote_types(x.dtype, torch.float32)
        w = weight.to(acc)
        y = bias.to(acc).expand(x.shape).clone()
        yg, xg = (t.unflatten(1, (-1, group)) for t in (y, x))  # (B, T/g, g, E)
        for k, out, inp in _taps(group, weight.shape[1]):
            yg[:, :, out].addcmul_(xg[:, :, inp], w[:, k])
        ctx.save_for_backward(x, weight)
        ctx.group = group
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        acc = torch.promote_types(x.dtype, torch.float32)
        g, w = gy.to(acc), weight.to(acc)
        dx = torch.zeros(x.shape, device=x.device, dtype=acc)
        dw = torch.zeros(weight.shape, device=x.device, dtype=acc)
        gg, xg, dxg = (t.unflatten(1, (-1, ctx.group)) for t in (g, x, dx))
        for k, out, inp in _taps(ctx.group, weight.shape[1]):
            dw[:, k] = (gg[:, :, out] * xg[:, :, inp]).sum(dim=(0, 1, 2))
            dxg[:, :, inp].addcmul_(gg[:, :, out], w[:, k])
        return dx.to(x.dtype), dw.to(weight.dtype), g.sum((0, 1)).to(weight.dtype), None


def _taps(group: int, W: int):
    """(k, steps of each group that tap k writes, steps it reads) for a W-wide causal conv inside groups of g
    steps: tap k reaches s = W-1-k steps back, so steps s.. of a group take its steps ..g-s."""
    for k in range(max(0, W - group), W):
        s = W - 1 - k
        yield k, slice(s, None), slice(0, group - s)


def grouped_causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, group: int) -> torch.Tensor:
    """Depthwise causal conv of each group of g consecutive steps on its own, from zeros, without the SiLU (the
    CPU path of `causal_conv_silu` for groups): x (B, T, E) with T whole groups -> (B, T, E) in x's dtype."""
    return _GroupedCausalConv.apply(x, weight, bias, group)


def _kernels(device: torch.device):
    """The Triton conv module on CUDA when Triton imports, else None (warning once on CUDA, as the scans)."""
    if scan._kernels("causal_conv", device) is None:
        return None
    from seqrl.kernels import triton_conv

    return triton_conv


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, group: int = 0) -> torch.Tensor:
    """silu(causal depthwise conv) of x (B, T, E) with weight (E, W) and bias (E,), from zeros, over the whole
    sequence (group 0) or inside each group of `group` steps (module docstring) -> (B, T, E) in x's dtype."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2] or bias.shape != (x.shape[2],):
        raise ValueError(f"causal_conv_silu: x (B, T, E), weight (E, W), bias (E,); got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if not isinstance(group, int) or group < 0 or (group and x.shape[1] % group):
        raise ValueError(f"causal_conv_silu: group must be an int >= 0 and T ({x.shape[1]}) whole groups of it, "
                         f"got {group!r}")
    kernels = _kernels(x.device)
    if kernels is not None:
        return kernels.causal_conv_silu_triton(x, weight, bias, group)
    if group:
        return F.silu(grouped_causal_conv(x, weight, bias, group))
    W, acc = weight.shape[1], torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):  # sums in float32, as on the other paths
        y = F.conv1d(F.pad(x.transpose(1, 2).to(acc), (W - 1, 0)), weight[:, None].to(acc), bias.to(acc),
                     groups=x.shape[2])
    return F.silu(y).transpose(1, 2).contiguous().to(x.dtype)
