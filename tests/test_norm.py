"""LayerNorm and RMSNorm over the last dim (`seqrl.kernels.norm`, the modules of `seqrl.nn.norm`), on every path,
against the formula written out in float64: values and the gradients of x, weight and bias, on strided inputs,
row counts that leave a partial block and that make the backward's programs walk several blocks; gradcheck."""

import pytest
import torch
from torch import nn

from seqrl.kernels.norm import layer_norm, rms_norm
from seqrl.nn.norm import LayerNorm, RMSNorm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(x, w, b, eps, rms):
    """The formula, step by step (no PyTorch norm)."""
    xc = x if rms else x - x.mean(-1, keepdim=True)
    y = xc / torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps) * w
    return y if b is None else y + b


def inputs(shape, device, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = shape[-1]
    x = (torch.randn(*shape[:-1], 2 * N, generator=g, dtype=torch.float64) * 3 + 1)[..., :N]  # strided, off zero
    w, b = 1 + torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_() for t in (x, w, b if bias else None) if t is not None] + \
        ([] if bias else [None])


def run(x, w, b, rms, eps=1e-5):
    return rms_norm(x, w, eps) if rms else layer_norm(x, w, b, eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape", [(7, 5), (2, 30, 128), (3, 1, 70), (20000, 5), (1, 130), (0, 16)])
def test_norm_matches_the_formula(device, rms, shape):
    """float64 on every path; (20000, 5) gives the backward's programs several blocks of rows each."""
    x, w, b = inputs(shape, device)
    b = None if rms else b
    y = run(x, w, b, rms)
    leaves = [t for t in (x, w, b) if t is not None]
    refs = [t.detach().cpu().requires_grad_() for t in leaves]
    ref = reference(refs[0], refs[1], None if rms else refs[2], 1e-5, rms)
    assert y.shape == x.shape and y.dtype == torch.float64
    torch.testing.assert_close(y.cpu(), ref, atol=1e-10, rtol=1e-10)  # (rows of 5 with a tiny variance)
    if not x.numel():
        return
    gy = torch.randn(shape, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, leaves, gy.to(device)), torch.autograd.grad(ref, refs, gy)):
        torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_without_bias(device):
    x, w, _ = inputs((4, 9), device)
    y = layer_norm(x, w, None)
    xr, wr = (t.detach().cpu().requires_grad_() for t in (x, w))
    ref = reference(xr, wr, None, 1e-5, False)
    torch.testing.assert_close(y.cpu(), ref)
    gy = torch.randn(4, 9, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, (x, w), gy.to(device)), torch.autograd.grad(ref, (xr, wr), gy)):
        torch.testing.assert_close(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rms", [False, True])
def test_norm_gradcheck(device, rms):
    x, w, b = inputs((3, 4, 6), device)
    args = (x, w) if rms else (x, w, b)
    assert torch.autograd.gradcheck(lambda *a: run(*a, None, rms) if rms else run(*a, rms), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rms", [False, True])
def test_norm_low_precision(device, dtype, rms):
    """x in float32 / bf16 and float32 parameters: y and dx in x's dtype, the parameters' gradients in theirs; the
    float64 formula on the same rounded x."""
    x, w, b = inputs((4, 60, 128), device, torch.float32, seed=1)
    xl = x.detach().to(dtype).requires_grad_()
    b = None if rms else b
    y = run(xl, w, b, rms)
    assert y.dtype == dtype
    leaves = [t for t in (xl, w, b) if t is not None]
    refs = [t.detach().cpu().double().requires_grad_() for t in leaves]
    ref = reference(refs[0], refs[1], None if rms else refs[2], 1e-5, rms)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(y.cpu().double(), ref, atol=tol * 4, rtol=tol)
    gy = torch.randn(4, 60, 128).to(dtype)
    got = torch.autograd.grad(y, leaves, gy.to(device))
    want = torch.autograd.grad(ref, refs, gy.double())
    assert got[0].dtype == dtype and all(g.dtype == torch.float32 for g in got[1:])
    torch.testing.assert_close(got[0].cpu().double(), want[0], atol=tol * 4, rtol=tol)
    # sums over 240 rows, relative to their size; PyTorch's CPU LayerNorm accumulates a bf16 x's in bf16
    sum_tol = 5e-2 if dtype == torch.bfloat16 and device == "cpu" else 1e-5
    for g, r in zip(got[1:], want[1:]):
        assert ((g.cpu().double() - r).norm() / r.norm()).item() < sum_tol


@pytest.mark.parametrize("device", DEVICES)
def test_norm_under_autocast_matches_pytorch_dtype(device):
    """Under autocast the modules give what nn.LayerNorm / nn.RMSNorm give on that device, in the same dtype (CUDA:
    LayerNorm float32 from bf16, RMSNorm bf16), within rounding."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, device=device).to(torch.bfloat16)
    ours, theirs = LayerNorm(16).to(device), nn.LayerNorm(16).to(device)
    ours_r, theirs_r = RMSNorm(16, eps=1e-5).to(device), nn.RMSNorm(16, eps=1e-5).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        for a, b in ((ours, theirs), (ours_r, theirs_r)):
            ya, yb = a(x), b(x)
            f32 = device == "cuda" and isinstance(a, LayerNorm)
            assert ya.dtype == yb.dtype == (torch.float32 if f32 else torch.bfloat16)
            tol = 1e-5 if f32 else 1e-2
            torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)


def test_modules_keep_the_torch_modules_state():
    """Same parameters and state-dict keys as nn.LayerNorm / nn.RMSNorm: checkpoints load either way; RMSNorm's
    eps None is the input dtype's machine epsilon, as nn.RMSNorm."""
    torch.manual_seed(0)
    src = nn.LayerNorm(6)
    src.weight.data.normal_(), src.bias.data.normal_()
    ln = LayerNorm(6)
    ln.load_state_dict(src.state_dict())
    x = torch.randn(2, 3, 6, dtype=torch.float64) * 4
    torch.testing.assert_close(ln.double()(x), reference(x, src.weight.double(), src.bias.double(), 1e-5, False))
    rms = RMSNorm(6)
    assert rms.eps is None and set(rms.state_dict()) == set(nn.RMSNorm(6).state_dict()) == {"weight"}
    torch.testing.assert_close(rms.double()(x), reference(x, torch.ones(6, dtype=torch.float64), None,
                                                          torch.finfo(torch.float64).eps, True))


def test_norm_rejects_bad_shapes():
    x, w, b = inputs((4, 9), "cpu")
    with pytest.raises(ValueError, match=r"layer_norm: x \(\.\.\., N\) with weight \(N,\) and bias"):
        layer_norm(x, w[:5], b)
    with pytest.raises(ValueError, match="bias"):
        layer_norm(x, w, b[:3])
    with pytest.raises(ValueError, match=r"rms_norm: .*weight \(8,\)"):
        rms_norm(x, w[:8])
    with pytest.raises(ValueError, match="rms_norm"):
        rms_norm(torch.tensor(1.0), w)
