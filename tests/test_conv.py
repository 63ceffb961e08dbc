"""The causal depthwise conv + SiLU in front of Mamba's scan (`seqrl.kernels.conv`), on every path, against
PyTorch's conv1d run on each group alone from zeros in float64: values and gradients, on strided inputs as the
mixer passes them (half of a wider projection); gradcheck in float64."""

import pytest
import torch
import torch.nn.functional as F

from seqrl.kernels.conv import causal_conv_silu

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(x, w, b, group):
    """silu(conv1d) of each group of `group` steps (the whole sequence for 0) alone, zero-padded on the left."""
    B, T, E = x.shape
    g = group or T
    xg = F.pad(x.reshape(B * T // g, g, E).transpose(1, 2), (w.shape[1] - 1, 0))
    return F.silu(F.conv1d(xg, w[:, None], b, groups=E)).transpose(1, 2).reshape(B, T, E)


def inputs(B, T, E, W, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 2 * E, generator=g, dtype=torch.float64)[..., :E]  # strided, as in_proj's first half
    w, b = torch.randn(E, W, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,T,E,W,group", [(2, 9, 5, 4, 3), (2, 8, 5, 3, 2), (1, 6, 3, 1, 3), (2, 10, 5, 2, 5),
                                           (2, 4, 5, 4, 1), (2, 13, 70, 4, 0), (3, 75, 130, 4, 3), (2, 2, 5, 4, 0),
                                           (1, 40, 9, 4, 40)])
def test_causal_conv_silu_matches_conv1d_on_each_group(device, B, T, E, W, group):
    """float64 on every path; values and the gradients of x, weight and bias against the reference's."""
    x, w, b = inputs(B, T, E, W, device)
    y = causal_conv_silu(x, w, b, group)
    xr, wr, br = (t.detach().cpu().requires_grad_() for t in (x, w, b))
    ref = reference(xr, wr, br, group)
    assert y.shape == (B, T, E) and y.dtype == torch.float64 and y.is_contiguous()
    torch.testing.assert_close(y.cpu(), ref, atol=1e-12, rtol=1e-12)
    gy = torch.randn(B, T, E, dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, w, b), gy.to(device))
    for got, want in zip(grads, torch.autograd.grad(ref, (xr, wr, br), gy)):
        torch.testing.assert_close(got.cpu(), want, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", [0, 3])
def test_causal_conv_silu_gradcheck(device, group):
    x, w, b = inputs(2, 6, 3, 4, device)
    assert torch.autograd.gradcheck(lambda *a: causal_conv_silu(*a, group), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [0, 3])
def test_causal_conv_silu_low_precision(device, dtype, group):
    """float32 / bf16 inputs and a float32 weight, as under autocast: the float64 reference on the same rounded
    values, rounded once to the output dtype; weight and bias gradients in the weight's dtype."""
    B, T, E, W = 4, 60, 256, 4
    x, w, b = inputs(B, T, E, W, device, torch.float32, seed=1)
    xl = x.detach().to(dtype).requires_grad_()
    y = causal_conv_silu(xl, w, b, group)
    assert y.dtype == dtype
    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (xl, w, b))
    ref = reference(xr, wr, br, group)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(y.cpu().double(), ref, atol=tol, rtol=tol)
    gy = torch.randn(B, T, E).to(dtype)
    dx, dw, db = torch.autograd.grad(y, (xl, w, b), gy.to(device))
    assert dx.dtype == dtype and dw.dtype == db.dtype == torch.float32
    rx, rw, rb = torch.autograd.grad(ref, (xr, wr, br), gy.double())
    torch.testing.assert_close(dx.cpu().double(), rx, atol=tol * 4, rtol=tol)
    for got, want in ((dw, rw), (db, rb)):  # sums over B*T steps: relative to their size
        assert ((got.cpu().double() - want).norm() / want.norm()).item() < tol


def test_causal_conv_silu_rejects_bad_shapes():
    x, w, b = inputs(2, 9, 5, 4, "cpu")
    with pytest.raises(ValueError, match="whole groups"):
        causal_conv_silu(x[:, 1:], w, b, 3)
    with pytest.raises(ValueError, match=r"weight \(E, W\)"):
        causal_conv_silu(x, w[:4], b, 3)
    with pytest.raises(ValueError, match="group must be an int"):
        causal_conv_silu(x, w, b, -1)
