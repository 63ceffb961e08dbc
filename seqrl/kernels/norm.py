"""LayerNorm and RMSNorm over the last dim: the one entry point, whatever the device.

    layer_norm: y = (x - mean) / sqrt(var + eps) * weight + bias      rms_norm: y = x / sqrt(mean(x^2) + eps) * weight

with the mean and (biased) variance over the last dim, taken in float32 (float64 for float64 inputs). y comes
back in x's dtype (LayerNorm: float32 for half-precision x under CUDA's autocast), as PyTorch's norms give.

Paths, picked by the inputs' device:

- CUDA: the Triton kernels of `seqrl/kernels/triton_norm.py` (rows up to 8,192 wide), one kernel forward and one
  backward plus a small sum for the weight and bias gradients. PyTorch's own kernels spend most of their
  backward reducing the weight gradient over many narrow rows (see there). Without Triton, or wider rows, PyTorch's
  kernels (a `KernelFallbackWarning` once when Triton is missing, as the scans).
- CPU (any other device): `F.layer_norm` / `F.rms_norm`.

`seqrl.nn.norm.LayerNorm` and `RMSNorm` are `nn.LayerNorm` / `nn.RMSNorm` (same parameters and state-dict keys)
whose forward calls these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrl.kernels import scan


def _kernels(x: torch.Tensor):
    """The Triton norm module where it applies to x (CUDA, Triton imports, rows up to MAX_N wide), else None."""
    if not x.is_cuda or scan._kernels("norm", x.device) is None:  # (is_cuda first: a CPU step pays no routing)
        return None
    from seqrl.kernels import triton_norm

    return triton_norm if x.shape[-1] <= triton_norm.MAX_N else None


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    N = x.shape[-1] if x.dim() else -1
    if weight.shape != (N,) or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"{name}: x (..., N) with weight (N,)" + (" and bias (N,)" if bias is not None else "")
                         + f"; got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
                         + (f", bias {tuple(bias.shape)}" if bias is not None else ""))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm of x (..., N) over N with weight (N,) and bias (N,) or None (module docstring)."""
    _check("layer_norm", x, weight, bias)
    kernels = _kernels(x)
    if kernels is not None:
        return kernels.norm_triton(x, weight, bias, eps, rms=False)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """RMSNorm of x (..., N) over N with weight (N,); eps None is x's dtype's machine epsilon, as nn.RMSNorm."""
    _check("rms_norm", x, weight, None)
    kernels = _kernels(x)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    if kernels is not None:
        return kernels.norm_triton(x, weight, None, eps, rms=True)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)
