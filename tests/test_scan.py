"""Every path of the linear-recurrence kernels against the plain loop, in float64; and which path runs.

Each check runs on the CPU (the chunked PyTorch path, computing in the inputs' float64) and, where a
GPU is present, on CUDA (the Triton kernels, computing in float32: looser tolerances). The loop
itself always runs in float64 on the CPU. `gradcheck` needs float64 arithmetic, so it runs on the CPU
path; the Triton gradients are held to the loop's autograd gradients instead. The fallbacks (Triton
missing, or without Gluon) are simulated on the CPU with stand-in modules."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

import seqrl.kernels
from seqrl.kernels import scan as scan_mod
from seqrl.kernels.scan import (KernelFallbackWarning, kernel_status, linear_scan, linear_scan_ref, linear_step,
                                selective_scan, selective_scan_ref, selective_step)

CUDA = torch.cuda.is_available()
# each name a different code path (see `paths`) of the recurrences it parametrises
SELECTIVE = ["cpu"] + (["cuda", "cuda-segments"] if CUDA else [])
STEP = ["cpu"] + (["cuda"] if CUDA else [])
LINEAR = ["cpu", "cpu-sequential"] + (["cuda"] if CUDA else [])
TOL = {"cpu": 1e-9, "cpu-sequential": 1e-9, "cuda": 2e-5, "cuda-segments": 2e-5}  # relative error against the loop


@pytest.fixture(autouse=True)
def paths(request, monkeypatch):
    """"cpu": the chunked PyTorch path; for the linear scan a chunk's steps run as a parallel scan, and
    "cpu-sequential" runs them one after another (the selective scan has only the sequential form). "cuda":
    the Triton kernels, one segment per sequence; "cuda-segments" (selective scan) in the shortest segments
    allowed (the forward's SEG, the backward's CONFIG["bwd"]["SEG"] steps), which carries states and adjoints
    from segment to segment."""
    device = request.node.callspec.params.get("device") if hasattr(request.node, "callspec") else None
    monkeypatch.setattr(scan_mod, "PARALLEL_BELOW", 0 if device == "cpu-sequential" else 10**9)
    if device in ("cuda", "cuda-segments"):
        status = kernel_status("cuda")
        if not status["selective_step" if device == "cuda" else "selective_scan"].startswith("triton"):
            pytest.skip(f"no Triton kernels to test for {device!r}: {status}")
        from seqrl.kernels import triton_scan

        programs = 1 if device == "cuda" else 10**9  # segments: max(1, min(l / SEG, PROGRAMS // rows))
        monkeypatch.setitem(triton_scan.CONFIG["fwd"], "PROGRAMS", programs)
        monkeypatch.setitem(triton_scan.CONFIG["bwd"], "PROGRAMS", programs)


def dev(device):
    return "cpu" if device.startswith("cpu") else "cuda"


def close(actual, expected, device, what="", tol=None):
    """Relative L2 error of `actual` against the float64 reference, within the path's tolerance."""
    actual, expected = actual.detach().cpu().to(expected.dtype), expected.detach()
    err = ((actual - expected).norm() / expected.norm().clamp_min(1e-2)).item()  # near-zero references: absolute
    tol = tol or TOL[device]
    assert err < tol, f"{what}: relative error {err:.2e} over {tol:.0e}"


def selective_inputs(b, d, n, l, dtype=torch.float64, device="cpu", seed=0, h0=True, z=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5, A=-torch.exp(r(d, n) * 0.5), B=r(b, n, l), C=r(b, n, l),
             D=r(d), z=r(b, d, l) if z else None, delta_bias=r(d) * 0.3, h0=r(b, d, n) if h0 else None)
    return {k: None if v is None else v.to(device, dtype) for k, v in x.items()}


def on(x, device):
    return {k: None if v is None else v.to(dev(device)) for k, v in x.items()}


@pytest.mark.parametrize("device", SELECTIVE)
@pytest.mark.parametrize("b,d,n,l,chunk", [(2, 3, 4, 1, 4), (2, 3, 4, 7, 4), (2, 3, 4, 16, 4), (2, 3, 4, 37, 8),
                                           (1, 5, 16, 300, 64), (3, 9, 8, 129, 64)])
def test_selective_scan_matches_loop(device, b, d, n, l, chunk):
    x = selective_inputs(b, d, n, l, seed=l)
    out, h = selective_scan(**on(x, device), delta_softplus=True, return_state=True, chunk=chunk)
    ref, h_ref = selective_scan_ref(**x, delta_softplus=True)
    close(out, ref, device, "out")
    close(h, h_ref, device, "final state")


@pytest.mark.parametrize("device", SELECTIVE)
@pytest.mark.parametrize("gate,h0,l", [(True, True, 11), (False, False, 11), (True, True, 200), (True, False, 1)])
@pytest.mark.parametrize("used", ["both", "out", "state"])
def test_selective_scan_gradients_match_loop(device, gate, h0, l, used):
    """Gradients through the output and the final state, and through either alone (the other output's gradient
    then reaches the backward as None)."""
    x = selective_inputs(2, 5, 4, l, seed=1, z=gate, h0=h0)
    names = [k for k, v in x.items() if v is not None]
    g = torch.randn(2, 5, l, dtype=torch.float64) * (used != "state")
    g_h = torch.randn(2, 5, 4, dtype=torch.float64) * (used != "out")
    leaves = {k: x[k].clone().to(dev(device)).requires_grad_() for k in names}
    out, h = selective_scan(**{**on(x, device), **leaves}, delta_softplus=True, return_state=True, chunk=4)
    loss = {"both": (out.double() * g.to(dev(device))).sum() + (h.double() * g_h.to(dev(device))).sum(),
            "out": (out.double() * g.to(dev(device))).sum(), "state": (h.double() * g_h.to(dev(device))).sum()}[used]
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=used == "state")
    if used == "state":  # z gates the output only
        grads = [torch.zeros_like(leaves[k]) if a is None else a for k, a in zip(names, grads)]
    ref_leaves = {k: x[k].clone().requires_grad_() for k in names}
    ref, h_ref = selective_scan_ref(**{**x, **ref_leaves}, delta_softplus=True)
    grads_ref = torch.autograd.grad((ref * g).sum() + (h_ref * g_h).sum(), list(ref_leaves.values()))
    for name, a, b in zip(names, grads, grads_ref):
        close(a, b, device, f"grad of {name}")


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
    return _SelectiveScanChunked.apply(x["u"], dt, x["A"], x["B"], x["C"], x["h0"], 2, 0)


@pytest.mark.parametrize("device", SELECTIVE)
def test_selective_scan_in_segments_equals_one_pass(device):
    x = on(selective_inputs(2, 3, 4, 300, seed=4), device)
    full = selective_scan(**x, delta_softplus=True)
    seq = {k: x[k] for k in ("u", "delta", "B", "C", "z")}
    fixed = {k: x[k] for k in ("A", "D", "delta_bias")}
    h, outs = x["h0"], []
    for sl in (slice(0, 130), slice(130, 131), slice(131, 300)):
        out, h = selective_scan(**{k: v[..., sl] for k, v in seq.items()}, **fixed, h0=h.double(),
                                delta_softplus=True, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, -1), full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", STEP)
def test_selective_step_is_one_scan_step(device):
    x = selective_inputs(3, 40, 16, 6, seed=5)
    ref, h_ref = selective_scan_ref(**x, delta_softplus=True)
    xd = on({k: v.float() for k, v in x.items()}, device)
    h = xd["h0"]
    for t in range(6):
        y, h = selective_step(h, xd["u"][..., t], xd["delta"][..., t], xd["A"], xd["B"][..., t], xd["C"][..., t],
                              xd["D"], xd["z"][..., t], xd["delta_bias"], delta_softplus=True)
        assert y.shape == (3, 40) and h.shape == (3, 40, 16)
        err = ((y.double().cpu() - ref[..., t]).norm() / ref[..., t].norm()).item()
        assert err < 1e-5, err
    assert ((h.double().cpu() - h_ref).norm() / h_ref.norm()).item() < 1e-5


def steps_major(t):
    """(b, d, l) -> the same values as (b, l, d) memory: the transpose of a projection's output."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def half_of_wider(t):
    """(b, d, l) -> the same values as the second half of a (b, l, 2d) tensor, as Mamba's z (half of in_proj)."""
    wide = torch.cat([torch.zeros_like(t), t], dim=1).transpose(1, 2).contiguous()
    return wide[..., t.shape[1]:].transpose(1, 2)


LAYOUTS = {"bdl": {}, "bld": {"u": steps_major, "delta": steps_major, "z": half_of_wider},
           "mixed": {"delta": steps_major, "z": half_of_wider}}  # mixed: u as a (b, d, l) conv gives it


@pytest.mark.parametrize("device", SELECTIVE)
@pytest.mark.parametrize("b,d,n,l", [(2, 40, 16, 300), (3, 9, 8, 129), (2, 40, 32, 300), (1, 33, 64, 130)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_selective_scan_float32_inputs_match_loop(device, b, d, n, l, layout):
    """float32 tensors as a model passes them (the other tests pass float64): values, final state and
    gradients against the loop run in float64 on the same (float32-rounded) values. B and C arrive as
    transposed views, as Mamba's projections give them; u, delta and z as (b, d, l) memory, or as Mamba's
    projections give them (layout "bld": the kernels then read (b, l, d) memory in place, z with its own step
    stride, and write the output and the gradients so; "mixed": u is (b, d, l) memory and is copied)."""
    x = {k: None if v is None else v.float().double() for k, v in selective_inputs(b, d, n, l, seed=l).items()}
    names = [k for k, v in x.items() if v is not None]
    gy, gh = torch.randn(b, d, l, dtype=torch.float64), torch.randn(b, d, n, dtype=torch.float64)
    leaves = {k: x[k].float().to(dev(device)).requires_grad_() for k in names}
    make = {"B": steps_major, "C": steps_major, **LAYOUTS[layout]}
    views = {k: make[k](leaves[k]) if k in make else leaves[k] for k in names}
    out, h = selective_scan(**views, delta_softplus=True, return_state=True)
    assert out.dtype == torch.float32
    if dev(device) == "cuda":  # the kernels' layout: (b, l, d) memory when most of u, delta and z are
        assert out.transpose(1, 2).is_contiguous() == (layout != "bdl")
    gy = gy.to(dev(device))
    if layout != "bdl":  # the output's gradient as (b, l, d) memory too, as an out_proj gives it
        gy = steps_major(gy)
    grads = torch.autograd.grad((out.double() * gy).sum() + (h.double() * gh.to(dev(device))).sum(),
                                list(leaves.values()))
    gy = gy.cpu()
    ref_leaves = {k: x[k].clone().requires_grad_() for k in names}
    ref, h_ref = selective_scan_ref(**ref_leaves, delta_softplus=True)
    tol = 2e-5  # float32 arithmetic on every path
    close(out, ref, device, "out", tol)
    close(h, h_ref, device, "final state", tol)
    for name, a, r in zip(names, grads, torch.autograd.grad((ref * gy).sum() + (h_ref * gh).sum(),
                                                            list(ref_leaves.values()))):
        close(a, r, device, f"grad of {name}", tol)


@pytest.mark.parametrize("device", SELECTIVE)
def test_selective_scan_bf16_inputs_accumulate_in_fp32(device):
    """bf16 inputs, a float32 state: the output is the float64 loop on the same (bf16) values, rounded once
    to bf16. The inputs make bf16 accumulation fail: slow decays (dt ~ e^-5, so exp(dt A) rounds to 1 or
    0.996 in bf16) and same-sign inputs, so the state grows to where bf16 drops each step's increment, over
    1000 steps. The loop run in bf16 misses the tolerance by far, which the test asserts too."""
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    b, d, n, l = 2, 8, 4, 1000
    x = dict(u=r(b, d, l).abs() + 0.5, delta=r(b, d, l) * 0.3 - 5.0, A=-torch.exp(r(d, n) * 0.5),
             B=r(b, n, l).abs(), C=r(b, n, l), D=r(d) * 0.1, z=r(b, d, l))
    x = {k: v.to(torch.bfloat16) for k, v in x.items()}
    ref, _ = selective_scan_ref(**{k: v.double() for k, v in x.items()}, delta_softplus=True)
    out = selective_scan(**{k: v.to(dev(device)) for k, v in x.items()}, delta_softplus=True).cpu()
    assert out.dtype == torch.bfloat16
    tol = 4e-3  # rounding the output to bf16 alone is up to 2^-9 = 2e-3 relative per element
    close(out, ref, device, "bf16 inputs, float32 state", tol)
    bf16_loop, _ = selective_scan_ref(**x, delta_softplus=True)
    err_loop = ((bf16_loop.double() - ref).norm() / ref.norm()).item()
    assert err_loop > 10 * tol, f"a loop in bf16 is off by {err_loop:.1e} only: the tolerance tells nothing"


@pytest.mark.parametrize("device", SELECTIVE)
@pytest.mark.parametrize("l,g,chunk", [(12, 3, 4), (19, 3, 4), (150, 3, 8), (7, 1, 4), (300, 5, 16)])
def test_selective_scan_reset_every_restarts_each_group(device, l, g, chunk):
    """reset_every=g: values and gradients equal the loop, and the loop equals each group of g steps run
    as its own sequence from zero. Lengths not a multiple of g; groups straddling chunk boundaries."""
    x = selective_inputs(2, 5, 4, l, seed=l + g, h0=False)
    names = [k for k, v in x.items() if v is not None]
    seq = ("u", "delta", "B", "C", "z")
    apart = torch.cat([selective_scan_ref(**{k: v[..., s:s + g] if k in seq else v for k, v in x.items()},
                                          delta_softplus=True)[0] for s in range(0, l, g)], -1)
    gy, gh = torch.randn(2, 5, l, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    leaves = {k: x[k].clone().to(dev(device)).requires_grad_() for k in names}
    out, h = selective_scan(**leaves, delta_softplus=True, return_state=True, chunk=chunk, reset_every=g)
    grads = torch.autograd.grad((out.double() * gy.to(dev(device))).sum() + (h.double() * gh.to(dev(device))).sum(),
                                list(leaves.values()))
    ref_leaves = {k: x[k].clone().requires_grad_() for k in names}
    ref, h_ref = selective_scan_ref(**ref_leaves, delta_softplus=True, reset_every=g)
    torch.testing.assert_close(ref.detach(), apart, rtol=1e-12, atol=1e-12)
    close(out, ref, device, "out")
    close(h, h_ref, device, "final state")
    for name, a, b in zip(names, grads, torch.autograd.grad((ref * gy).sum() + (h_ref * gh).sum(),
                                                            list(ref_leaves.values()))):
        close(a, b, device, f"grad of {name}")


def test_selective_scan_reset_every_gradcheck():
    x = selective_inputs(1, 2, 3, 7, seed=9, h0=False)
    names = [k for k, v in x.items() if v is not None]

    def f(*args):
        return selective_scan(**dict(zip(names, args)), delta_softplus=True, chunk=2, reset_every=3)
    assert torch.autograd.gradcheck(f, [x[k].clone().requires_grad_() for k in names])


def test_selective_scan_reset_every_rejects_bad_input():
    x = selective_inputs(2, 3, 4, 6)
    with pytest.raises(ValueError, match="h0 is unused"):
        selective_scan(**x, reset_every=3)
    with pytest.raises(ValueError, match="reset_every must be"):
        selective_scan(**{**x, "h0": None}, reset_every=-1)


def test_selective_scan_rejects_bad_shapes():
    x = selective_inputs(2, 3, 4, 5)
    x["B"] = x["B"][:, :, :4]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**x)


@pytest.mark.parametrize("device", LINEAR)
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("l,chunk", [(1, 4), (9, 4), (33, 8), (700, 64)])
def test_linear_scan_matches_loop(device, complex_, l, chunk):
    g = torch.Generator().manual_seed(l)
    dtype = torch.complex128 if complex_ else torch.float64
    a = torch.rand(2, 3, l, generator=g, dtype=torch.float64) * 0.99
    if complex_:
        a = a * torch.exp(1j * torch.randn(2, 3, l, generator=g, dtype=torch.float64))
    x = torch.randn(2, 3, l, generator=g, dtype=dtype)
    h0 = torch.randn(2, 3, generator=g, dtype=dtype)
    leaves = [t.to(dev(device)).requires_grad_() for t in (a, x, h0)]
    ref_leaves = [t.clone().requires_grad_() for t in (a, x, h0)]
    out, ref = linear_scan(*leaves, chunk=chunk), linear_scan_ref(*ref_leaves)
    close(out, ref, device, "h")
    w = torch.randn(ref.shape, generator=g, dtype=dtype)  # a real loss of complex outputs: Re(sum(conj(w) h))
    grads = torch.autograd.grad((out * w.to(dev(device)).conj()).real.sum(), leaves)
    grads_ref = torch.autograd.grad((ref * w.conj()).real.sum(), ref_leaves)
    for name, gr, gr_ref in zip(("a", "x", "h0"), grads, grads_ref):
        close(gr, gr_ref, device, f"grad of {name}")


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


def complex_inputs(b, d, l, seed, layout="bdl"):
    """a (|a| < 1), x, h0 complex128; "ldb": a and x (b, d, l) views of time-major (l, b, d) memory, as S4Layer
    builds them; "expanded": a one decay per channel, expanded over b and l (stride 0)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.complex128)  # noqa: E731
    a = torch.rand(b, d, l, generator=g, dtype=torch.float64) * 0.9 * torch.exp(1j * r(b, d, l).real)
    x, h0 = r(b, d, l), r(b, d)
    if layout == "ldb":
        a, x = a.permute(2, 0, 1).contiguous().permute(1, 2, 0), x.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    elif layout == "expanded":
        a = a[:1, :, :1].expand(b, d, l)
    return a, x, h0


@pytest.mark.parametrize("layout", ["bdl", "ldb", "expanded"])
def test_linear_scan_sequential_path_on_any_layout(layout, monkeypatch):
    """The step-by-step CPU path (time-major copies, none for time-major views or an expanded decay): values and
    gradients against the loop; gradcheck on a short one."""
    monkeypatch.setattr(scan_mod, "PARALLEL_BELOW", 0)
    a, x, h0 = complex_inputs(2, 3, 40, seed=8, layout=layout)
    leaves = [t.detach().requires_grad_() for t in (a, x, h0)]  # detach keeps the layout (and the expansion)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (a, x, h0)]
    out, ref = linear_scan(*leaves), linear_scan_ref(*ref_leaves)
    close(out, ref, "cpu", "h")
    w = torch.randn(ref.shape, dtype=ref.dtype)
    grads = torch.autograd.grad((out * w.conj()).real.sum(), leaves)
    for name, gr, gr_ref in zip("a x h0".split(), grads, torch.autograd.grad((ref * w.conj()).real.sum(), ref_leaves)):
        close(gr, gr_ref, "cpu", f"grad of {name}")
    a, x, h0 = complex_inputs(1, 2, 6, seed=9, layout=layout)
    if layout == "expanded":  # gradcheck perturbs elements one by one: give it the decays, expand them inside
        a = a[:, :, :1].contiguous()
    f = lambda a, x, h0: linear_scan(a.expand(x.shape), x, h0)  # noqa: E731
    assert torch.autograd.gradcheck(f, [t.detach().requires_grad_() for t in (a, x, h0)])


@pytest.mark.parametrize("complex_", [False, True])
def test_linear_step_is_one_step_of_the_scan(complex_):
    """Steps from h0 give the scan's states; h is cast to x's dtype (a float32 state into a float64 step)."""
    g = torch.Generator().manual_seed(10)
    dtype = torch.complex128 if complex_ else torch.float64
    a = torch.rand(2, 3, 5, generator=g, dtype=torch.float64).to(dtype)
    x, h = torch.randn(2, 3, 5, generator=g, dtype=dtype), torch.randn(2, 3, generator=g, dtype=dtype)
    ref = linear_scan_ref(a, x, h)
    for t in range(5):
        h = linear_step(h, a[..., t], x[..., t])
        torch.testing.assert_close(h, ref[..., t], rtol=1e-12, atol=1e-12)
    h32 = torch.randn(2, 3, generator=g).to(dtype.to_real() if complex_ else torch.float32)
    out = linear_step(h32, a[..., 0], x[..., 0])
    assert out.dtype == dtype
    torch.testing.assert_close(out, a[..., 0] * h32.to(dtype) + x[..., 0])


def test_linear_step_rejects_bad_inputs():
    h, a = torch.zeros(2, 3), torch.rand(2, 3)
    with pytest.raises(ValueError, match="must both be"):
        linear_step(h, a, torch.rand(2, 4))
    with pytest.raises(ValueError, match="must both be"):
        linear_step(h[0], a[0], a[0])
    with pytest.raises(ValueError, match="they must match"):
        linear_step(h, a, a.double())
    with pytest.raises(ValueError, match=r"h \(3, 2\) must be \(b, d\)"):
        linear_step(h.T, a, a)
    with pytest.raises(ValueError, match="complex state needs complex"):
        linear_step(h.to(torch.complex64), a, a)


class _PairsOnly(torch.autograd.Function):
    """A stand-in for the Triton linear scan: like the kernels, it reads every complex tensor as float pairs
    (view_as_real, which refuses a lazily conjugated tensor), in the forward and in the backward."""

    @staticmethod
    def forward(ctx, a, x, h0):
        for t in (a, x, h0):
            torch.view_as_real(t.contiguous())
        ctx.save_for_backward(a, x, h0)
        return linear_scan_ref(a, x, h0)

    @staticmethod
    def backward(ctx, g):
        torch.view_as_real(g.contiguous())
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            return torch.autograd.grad(linear_scan_ref(*leaves), leaves, g)


def test_linear_scan_hands_the_kernels_no_conjugate_views(monkeypatch):
    """A conjugated input and a gradient through a downstream .conj() reach the kernels resolved: the values and
    gradients are the loop's. Without the resolution the stand-in fails, as the Triton kernels would."""
    stand_in = types.SimpleNamespace(linear_scan_triton=_PairsOnly.apply)
    monkeypatch.setattr(scan_mod, "_kernels", lambda name, device: stand_in)
    a, x, h0 = complex_inputs(2, 3, 7, seed=11)
    with pytest.raises(RuntimeError, match="conjugated"):
        stand_in.linear_scan_triton(a.conj(), x, h0)
    leaves = [t.detach().requires_grad_() for t in (a, x, h0)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in (a, x, h0)]
    w = torch.randn(2, 3, 7, dtype=torch.complex128)
    out = linear_scan(leaves[0].conj(), *leaves[1:])
    ref = linear_scan_ref(ref_leaves[0].conj(), *ref_leaves[1:])
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad((out.conj() * w).real.sum(), leaves)
    for gr, gr_ref in zip(grads, torch.autograd.grad((ref.conj() * w).real.sum(), ref_leaves)):
        torch.testing.assert_close(gr, gr_ref)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_selective_scan_under_torch_compile():
    """A compiled loss around the scan runs (Inductor cannot recompile the Gluon kernels, so the scan stays
    outside its graph) and gives eager's value and gradients."""
    x = {k: v.float().cuda() for k, v in selective_inputs(2, 5, 4, 37, seed=12).items()}

    def loss(u, delta):
        return (selective_scan(u, delta, **{k: v for k, v in x.items() if k not in ("u", "delta")},
                               delta_softplus=True) * torch.linspace(-1, 1, 37, device="cuda")).square().sum()

    results = []
    for f in (loss, torch.compile(loss)):
        u, delta = x["u"].clone().requires_grad_(), x["delta"].clone().requires_grad_()
        value = f(u, delta)
        results.append((value, *torch.autograd.grad(value, (u, delta))))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ fallbacks
@pytest.fixture
def fresh_import():
    """seqrl.kernels.triton_scan imported afresh under whatever `triton` the test puts in sys.modules, and the
    real one (if any) back afterwards; the import cache and the warn-once record likewise."""
    saved_module = sys.modules.pop("seqrl.kernels.triton_scan", None)
    saved_attr = seqrl.kernels.__dict__.pop("triton_scan", None)
    saved_warned, saved_triton = set(scan_mod._warned), scan_mod._triton
    scan_mod._triton = None
    scan_mod._warned.clear()
    yield
    sys.modules.pop("seqrl.kernels.triton_scan", None)
    seqrl.kernels.__dict__.pop("triton_scan", None)
    if saved_module is not None:
        sys.modules["seqrl.kernels.triton_scan"] = saved_module
    if saved_attr is not None:
        seqrl.kernels.triton_scan = saved_attr
    scan_mod._triton = saved_triton
    scan_mod._warned.clear()
    scan_mod._warned.update(saved_warned)


def triton_without_gluon(monkeypatch):
    """A stand-in `triton` package as a Triton release before Gluon has it: `jit`, `cdiv`, `language` and an
    `experimental` package with no `gluon` in it. Kernels are never launched: only the import is exercised."""
    import torch._dynamo  # noqa: F401  (triton_scan uses torch.compiler.disable; dynamo probes Triton on import)

    triton = types.ModuleType("triton")
    triton.__version__ = "0.0-stand-in"
    triton.jit = lambda fn: fn
    triton.cdiv = lambda a, b: -(-a // b)
    triton.language = types.ModuleType("triton.language")
    triton.experimental = types.ModuleType("triton.experimental")
    for name, mod in [("triton", triton), ("triton.language", triton.language),
                      ("triton.experimental", triton.experimental)]:
        monkeypatch.setitem(sys.modules, name, mod)
    for name in [n for n in sys.modules if n.startswith("triton.experimental.")]:  # a real Triton's Gluon
        monkeypatch.delitem(sys.modules, name)


def no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


CUDA_DEV = torch.device("cuda")  # only a name here: no tensor is made on it


def test_cpu_paths_need_no_triton(fresh_import, monkeypatch):
    """The CPU paths are the design there, not fallbacks: no reason recorded, no warning, Triton not imported."""
    monkeypatch.setitem(sys.modules, "triton", None)  # importing it would raise
    assert no_warnings(kernel_status, "cpu") == {"selective_scan": "pytorch-chunked", "selective_step": "pytorch",
                                                 "linear_scan": "pytorch-chunked", "causal_conv": "pytorch",
                                                 "norm": "pytorch"}
    x = selective_inputs(1, 2, 3, 5)
    no_warnings(lambda: selective_scan(**x, delta_softplus=True))
    assert scan_mod._triton is None  # no import tried


def test_triton_without_gluon_falls_back_for_the_selective_scan_only(fresh_import, monkeypatch):
    """A Triton without Gluon: triton_scan imports (its Gluon kernels raise if launched), the selective scan on
    CUDA goes to the chunked PyTorch path with one warning and a recorded reason; the step and the linear
    scan keep their plain Triton kernels."""
    triton_without_gluon(monkeypatch)
    from seqrl.kernels import triton_scan

    assert "has no Gluon" in triton_scan.GLUON_MISSING and "0.0-stand-in" in triton_scan.GLUON_MISSING
    with pytest.raises(RuntimeError, match="Gluon"):
        triton_scan._selective_fwd[(1, 1, 1)]()
    with pytest.raises(RuntimeError, match="Gluon"):
        triton_scan.selective_scan_triton(*[None] * 10)
    status = no_warnings(kernel_status, "cuda")
    assert status == {"selective_scan": "pytorch-chunked", "selective_scan.fallback": triton_scan.GLUON_MISSING,
                      "selective_step": "triton", "linear_scan": "triton", "causal_conv": "triton", "norm": "triton"}
    assert "selective_scan.fallback" not in kernel_status("cpu")
    with pytest.warns(KernelFallbackWarning, match="selective_scan on CUDA runs in PyTorch.*has no Gluon"):
        assert scan_mod._kernels("selective_scan", CUDA_DEV) is None
    assert no_warnings(scan_mod._kernels, "selective_scan", CUDA_DEV) is None  # warned once only
    assert no_warnings(scan_mod._kernels, "linear_scan", CUDA_DEV) is triton_scan
    assert no_warnings(scan_mod._kernels, "selective_step", CUDA_DEV) is triton_scan


def test_without_triton_every_recurrence_falls_back(fresh_import, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    status = kernel_status("cuda")
    assert status == {"selective_scan": "pytorch-chunked", "selective_scan.fallback": "Triton is not installed",
                      "selective_step": "pytorch", "selective_step.fallback": "Triton is not installed",
                      "linear_scan": "pytorch-chunked", "linear_scan.fallback": "Triton is not installed",
                      "causal_conv": "pytorch", "causal_conv.fallback": "Triton is not installed",
                      "norm": "pytorch", "norm.fallback": "Triton is not installed"}
    for name in scan_mod.KERNELS:
        with pytest.warns(KernelFallbackWarning, match=f"{name} on CUDA runs in PyTorch, not Triton: Triton is not installed"):
            assert scan_mod._kernels(name, CUDA_DEV) is None
        assert no_warnings(scan_mod._kernels, name, CUDA_DEV) is None


@pytest.mark.skipif(not CUDA, reason="needs CUDA and Triton")
def test_cuda_selective_scan_without_gluon_runs_and_matches(fresh_import, monkeypatch):
    """On a real Triton with Gluon hidden: the selective scan runs on CUDA through the chunked path (values
    and gradients against the loop, one warning), the Triton step still runs."""
    pytest.importorskip("triton")
    import triton.experimental

    monkeypatch.delattr(triton.experimental, "gluon", raising=False)
    for name in [n for n in sys.modules if n.startswith("triton.experimental.gluon")] + ["triton.experimental.gluon"]:
        monkeypatch.setitem(sys.modules, name, None)
    status = kernel_status("cuda")
    assert status["selective_scan"] == "pytorch-chunked" and "Gluon" in status["selective_scan.fallback"]
    assert status["selective_step"] == status["linear_scan"] == "triton"
    x = selective_inputs(2, 5, 4, 37, seed=11)
    leaves = {k: v.cuda().requires_grad_() for k, v in x.items()}
    with pytest.warns(KernelFallbackWarning, match="Gluon"):
        out, h = selective_scan(**leaves, delta_softplus=True, return_state=True)
    ref_leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref, h_ref = selective_scan_ref(**ref_leaves, delta_softplus=True)
    close(out, ref, "cpu", "out")
    close(h, h_ref, "cpu", "final state")
    grads = torch.autograd.grad(out.sum() + h.double().sum(), list(leaves.values()))
    for name, a, r in zip(leaves, grads, torch.autograd.grad(ref.sum() + h_ref.sum(), list(ref_leaves.values()))):
        close(a, r, "cpu", f"grad of {name}")
    xf = {k: v.float().cuda() for k, v in x.items()}
    y, _ = no_warnings(selective_step, xf["h0"], xf["u"][..., 0], xf["delta"][..., 0], xf["A"], xf["B"][..., 0],
                       xf["C"][..., 0], xf["D"], xf["z"][..., 0], xf["delta_bias"], True)
    close(y, selective_scan_ref(**{k: v[..., :1] if k in ("u", "delta", "B", "C", "z") else v
                                   for k, v in x.items()}, delta_softplus=True)[0][..., 0], "cuda", "Triton step")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_selective_scan_on_misaligned_inputs_after_aligned_ones():
    """The same shapes run first from 16-byte-aligned tensors, then from views one element off, then aligned
    again: values and gradients match the loop each time (a kernel compiled for aligned addresses, launched on
    the misaligned call, would fail or read wrongly). 300 steps: several segments, so every kernel runs."""
    x = selective_inputs(2, 40, 4, 300, seed=13)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref, h_ref = selective_scan_ref(**leaves, delta_softplus=True)
    w = torch.randn(ref.shape, dtype=torch.float64)
    grads_ref = torch.autograd.grad((ref * w).sum() + h_ref.sum(), list(leaves.values()))
    for offset in (0, 1, 0):
        cuda = {}
        for k, v in x.items():
            flat = torch.zeros(v.numel() + offset, dtype=torch.float32, device="cuda")
            flat[offset:] = v.float().flatten().cuda()
            cuda[k] = flat[offset:].view(v.shape).requires_grad_()
        assert (cuda["u"].data_ptr() % 16 == 0) == (offset == 0)
        out, h = selective_scan(**cuda, delta_softplus=True, return_state=True)
        close(out, ref, "cuda", f"output, offset {offset}")
        close(h, h_ref, "cuda", f"last state, offset {offset}")
        grads = torch.autograd.grad((out * w.float().cuda()).sum() + h.sum(), list(cuda.values()))
        for name, g, g_ref in zip(cuda, grads, grads_ref):
            close(g, g_ref, "cuda", f"d{name}, offset {offset}", tol=1e-4)
