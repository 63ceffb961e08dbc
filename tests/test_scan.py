"""Every path of the linear-recurrence kernels against the plain loop, in float64.

On CPU these check the chunked PyTorch path; on CUDA (tests/test_gpu.py) the same checks run on Triton."""

import pytest
import torch
import torch.nn.functional as F

from seqrl.kernels.scan import (linear_scan, linear_scan_ref, selective_scan, selective_scan_ref,
                                selective_step)


def selective_inputs(b, d, n, l, dtype=torch.float64, device="cpu", seed=0, h0=True, z=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5, A=-torch.exp(r(d, n) * 0.5), B=r(b, n, l), C=r(b, n, l),
             D=r(d), z=r(b, d, l) if z else None, delta_bias=r(d) * 0.3, h0=r(b, d, n) if h0 else None)
    return {k: None if v is None else v.to(device, dtype) for k, v in x.items()}


@pytest.mark.parametrize("l,chunk", [(1, 4), (7, 4), (16, 4), (37, 8), (64, 64)])
def test_selective_scan_matches_loop(l, chunk):
    x = selective_inputs(2, 3, 4, l, seed=l)
    out, h = selective_scan(**x, delta_softplus=True, return_state=True, chunk=chunk)
    ref, h_ref = selective_scan_ref(**x, delta_softplus=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref.float(), rtol=1e-6, atol=1e-6)


def test_selective_scan_gradients_match_loop():
    x = selective_inputs(2, 3, 4, 11, seed=1)
    x = {k: v.requires_grad_() for k, v in x.items()}
    g = torch.randn(2, 3, 11, dtype=torch.float64)
    grads = torch.autograd.grad((selective_scan(**x, delta_softplus=True, chunk=4) * g).sum(), list(x.values()))
    grads_ref = torch.autograd.grad((selective_scan_ref(**x, delta_softplus=True)[0] * g).sum(), list(x.values()))
    for name, a, b in zip(x, grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")


def test_selective_scan_gradcheck():
    x = selective_inputs(1, 2, 3, 6, seed=2)
    names = list(x)

    def f(*args):
        out, h = selective_scan(**dict(zip(names, args)), delta_softplus=True, return_state=True, chunk=4)
        return out, h.double()

    # the final state is returned in float32, so check gradients through `out` and `h` separately
    assert torch.autograd.gradcheck(lambda *a: f(*a)[0], [v.requires_grad_() for v in x.values()])
    x2 = selective_inputs(1, 2, 3, 5, seed=3, z=False)
    names = list(x2)

    def f_state(*args):
        _, h = _state_f64(**dict(zip(names, args)))
        return h

    assert torch.autograd.gradcheck(f_state, [v.requires_grad_() if v is not None else v for v in x2.values()])


def _state_f64(**x):
    """The chunked path's final state in float64 (the public function returns it as float32)."""
    from seqrl.kernels.scan import _SelectiveScanChunked

    dt = F.softplus(x["delta"] + x["delta_bias"][:, None])
    return _SelectiveScanChunked.apply(x["u"], dt, x["A"], x["B"], x["C"], x["h0"], 2)


def test_selective_scan_in_segments_equals_one_pass():
    x = selective_inputs(2, 3, 4, 30, seed=4)
    full = selective_scan(**x, delta_softplus=True)
    seq = {k: x[k] for k in ("u", "delta", "B", "C", "z")}
    fixed = {k: x[k] for k in ("A", "D", "delta_bias")}
    h, outs = x["h0"], []
    for sl in (slice(0, 13), slice(13, 14), slice(14, 30)):
        out, h = selective_scan(**{k: v[..., sl] for k, v in seq.items()}, **fixed, h0=h.double(),
                                delta_softplus=True, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, -1), full, rtol=1e-6, atol=1e-6)


def test_selective_step_is_one_scan_step():
    x = selective_inputs(3, 4, 5, 6, seed=5)
    ref, _ = selective_scan_ref(**x, delta_softplus=True)
    h = x["h0"]
    for t in range(6):
        y, h = selective_step(h, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
                              x["D"], x["z"][..., t], x["delta_bias"], delta_softplus=True)
        torch.testing.assert_close(y, ref[..., t].to(y.dtype), rtol=1e-5, atol=1e-5)


def test_selective_scan_bf16_inputs_accumulate_in_fp32():
    x = selective_inputs(2, 8, 4, 200, dtype=torch.float32, seed=6)
    ref, _ = selective_scan_ref(**{k: None if v is None else v.double() for k, v in x.items()}, delta_softplus=True)
    out = selective_scan(**{k: None if v is None else v.bfloat16() for k, v in x.items()}, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 2e-2, err


def test_selective_scan_rejects_bad_shapes():
    x = selective_inputs(2, 3, 4, 5)
    x["B"] = x["B"][:, :, :4]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**x)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("l,chunk", [(1, 4), (9, 4), (33, 8)])
def test_linear_scan_matches_loop(complex_, l, chunk):
    g = torch.Generator().manual_seed(l)
    dtype = torch.complex128 if complex_ else torch.float64
    a = torch.rand(2, 3, l, generator=g, dtype=torch.float64) * 0.99
    if complex_:
        a = a * torch.exp(1j * torch.randn(2, 3, l, generator=g, dtype=torch.float64))
    x = torch.randn(2, 3, l, generator=g, dtype=dtype)
    h0 = torch.randn(2, 3, generator=g, dtype=dtype)
    torch.testing.assert_close(linear_scan(a, x, h0, chunk=chunk), linear_scan_ref(a, x, h0))


@pytest.mark.parametrize("complex_", [False, True])
def test_linear_scan_gradcheck(complex_):
    g = torch.Generator().manual_seed(7)
    dtype = torch.complex128 if complex_ else torch.float64
    a = (torch.rand(1, 2, 7, generator=g, dtype=torch.float64) * 0.9).to(dtype)
    if complex_:
        a = a * torch.exp(1j * torch.randn(1, 2, 7, generator=g, dtype=torch.float64))
    x = torch.randn(1, 2, 7, generator=g, dtype=dtype)
    h0 = torch.randn(1, 2, generator=g, dtype=dtype)
    args = [t.requires_grad_() for t in (a, x, h0)]
    assert torch.autograd.gradcheck(lambda a, x, h0: linear_scan(a, x, h0, chunk=3), args)


def test_linear_scan_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="must both be"):
        linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 5))
