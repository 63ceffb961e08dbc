"""The S4D and S5 layers of seqrl/nn/s4.py against slow, obvious float64 code written here from the parameters:
the recurrence, the two discretisations, the initialisations; gradients (gradcheck, through resets and every
parameter); the FFT path against the scan path; memory over 1000 steps; errors on bad input. The backbone's
forward/step contract is in tests/test_backbones.py."""

import math

import pytest
import torch
from torch.func import functional_call

from seqrl.kernels import scan as scan_mod
from seqrl.nn import s4 as s4_mod
from seqrl.nn.s4 import S4Backbone, S4Layer, S4State, hippo_n

KINDS = [("s4d", "zoh"), ("s4d", "bilinear"), ("s5", "zoh"), ("s5", "bilinear")]
IDS = [f"{k}-{d}" for k, d in KINDS]


def layer(kind, disc, H=3, d_state=6, seed=0, **kw):
    torch.manual_seed(seed)
    return S4Layer(H, d_state, kind=kind, discretization=disc, blocks=3 if kind == "s5" else 1, **kw).double()


def ssm_params(m):
    """A, dt, B, C, D written out from the raw parameters: A = -exp(log_neg_A_re) + i A_im, dt = exp(log_dt)."""
    A = -torch.exp(m.log_neg_A_re) + 1j * m.A_im
    dt = torch.exp(m.log_dt)
    B, C = (torch.complex(p[..., 0], p[..., 1]) for p in (m.B, m.C))
    return A, dt, B, C, m.D


def closed_form(A, dt, disc):
    """a and the gain g (b = g B): zoh a = e^{dt A}, g = (e^{dt A} - 1)/A; bilinear a = (1 + dt A/2)/(1 - dt A/2),
    g = dt/(1 - dt A/2)."""
    if disc == "zoh":
        return torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
    return (1 + dt * A / 2) / (1 - dt * A / 2), dt / (1 - dt * A / 2)


def slow_loop(m, u, h0=None, reset=None):
    """y (B, T, H) and the final state (B, M) by a loop over t, from the parameters: h_t = a h_{t-1} + b u_t (h zeroed
    before a step that starts an episode), y_t = 2 Re(C h_t) + D u_t."""
    A, dt, B, C, D = ssm_params(m)
    Bsz, T, H = u.shape
    if m.kind == "s4d":
        a, g = closed_form(A, dt[:, None], m.discretization)  # (H, N/2)
        b = g * B
        h = torch.zeros(Bsz, H, A.shape[1], dtype=torch.complex128) if h0 is None else h0.view(Bsz, H, -1)
    else:
        a, g = closed_form(A, dt, m.discretization)  # (P/2,)
        b = g[:, None] * B  # (P/2, H)
        h = torch.zeros(Bsz, A.shape[0], dtype=torch.complex128) if h0 is None else h0
    ys = []
    for t in range(T):
        if reset is not None:
            h = h * (~reset[:, t]).reshape(-1, *[1] * (h.dim() - 1))
        ut = u[:, t].to(torch.complex128)
        if m.kind == "s4d":
            h = a * h + b * ut[:, :, None]
            y = 2 * (C * h).sum(-1).real
        else:
            h = a * h + ut @ b.T
            y = 2 * (h @ C.T).real
        ys.append(y + D * u[:, t])
    return torch.stack(ys, 1), h.reshape(Bsz, -1)


def complex_state(state):
    return torch.view_as_complex(state.contiguous())


def no_scan(monkeypatch):
    """Make the scan path raise, so that a test can only pass through the FFT path; and let the FFT path take resets
    at the tests' short lengths."""
    def scan(*args, **kwargs):
        raise AssertionError("the scan path was taken")
    monkeypatch.setattr(S4Layer, "_scan", scan)
    monkeypatch.setattr(s4_mod, "FFT_RESET_MIN_LEN", {"s4d": 1, "s5": 1})


def chunked(monkeypatch, chunk=4):
    """Send the scan path to S4D's chunked form (its CUDA path), in chunks of `chunk` steps so that a test's short
    sequence spans several and ends inside one. a^k = exp(k log a) for any branch of log a."""
    monkeypatch.setattr(S4Layer, "_scan", lambda self, u, h0, a, b, C, reset: self._chunked(u, h0, torch.log(a), b, C,
                                                                                           reset, chunk))


@pytest.mark.parametrize("kind,disc", KINDS, ids=IDS)
@pytest.mark.parametrize("path", ["scan", "scan-sequential", "fft", "chunked"])
def test_forward_matches_the_slow_loop(kind, disc, path, monkeypatch):
    """From a random state, with resets (at the first step, mid-segment and at the last step) in float64, through
    every path: the parallel scan per chunk, the step-by-step scan, the FFT over episode segments and S4D's
    chunked form (the CUDA path; 21 steps in chunks of 4)."""
    if path == "chunked" and kind != "s4d":
        pytest.skip("the chunked form is S4D's")
    m = layer(kind, disc, fft_min_len=1 if path == "fft" else None)
    monkeypatch.setattr(scan_mod, "PARALLEL_BELOW", 0 if path == "scan-sequential" else 10**9)
    if path == "fft":
        no_scan(monkeypatch)
    if path == "chunked":
        chunked(monkeypatch)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 21, 3, generator=g, dtype=torch.float64)
    state = torch.randn(4, m.n_modes, 2, generator=g, dtype=torch.float64)
    reset = torch.zeros(4, 21, dtype=torch.bool)
    reset[2, 0] = True
    reset[1, 7] = reset[3, 1] = reset[3, 20] = True
    fft_calls = []
    monkeypatch.setattr(S4Layer, "_fft", lambda self, *a, f=S4Layer._fft: fft_calls.append(1) or f(self, *a))
    with torch.no_grad():
        y, h = m(u, state, reset)
        y_ref, h_ref = slow_loop(m, u, complex_state(state), reset)
    assert len(fft_calls) == (path == "fft")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(complex_state(h), h_ref, rtol=1e-10, atol=1e-10)


def episode_starts(B, T, seed):
    """Rows with every kind of segment layout: none; at step 0 only; at 0 and several more; consecutive ones
    (segments of one step) and one at the last step; every step; then random rows, about one in five steps."""
    g = torch.Generator().manual_seed(seed)
    reset = torch.rand(B, T, generator=g) < 0.2
    reset[:5] = False
    reset[1, 0] = True
    reset[2, [0, 3, 11, 12, T // 2]] = True
    reset[3, [5, 6, 7, 20, T - 1]] = True
    reset[4] = True
    return reset


@pytest.mark.parametrize("kind,disc", KINDS, ids=IDS)
@pytest.mark.parametrize("with_state", [True, False])
def test_fft_path_with_resets_matches_the_slow_loop(kind, disc, with_state, monkeypatch):
    """The FFT path over episode segments (the scan made to raise), float64, against the step-by-step loop: outputs,
    final states, and the gradients of both in the input, the incoming state and every parameter."""
    no_scan(monkeypatch)
    m = layer(kind, disc, H=3, d_state=6, fft_min_len=1)
    B, T = 8, 37
    g = torch.Generator().manual_seed(7)
    u = torch.randn(B, T, 3, generator=g, dtype=torch.float64, requires_grad=True)
    state = torch.randn(B, m.n_modes, 2, generator=g, dtype=torch.float64) if with_state else None
    reset = episode_starts(B, T, seed=8)
    plan = m._fft_plan(u, reset)
    assert plan is not None and plan.buckets is not None and len(plan.buckets) >= 4
    y, h = m(u, state, reset)
    y_ref, h_ref = slow_loop(m, u, None if state is None else complex_state(state), reset)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(complex_state(h), h_ref, rtol=1e-10, atol=1e-10)
    if state is not None:  # the state reaches row 0 (no resets) to the end, rows 1 and 4 not at all
        assert (y[0, -1] - slow_loop(m, u[:1])[0][0, -1]).abs().max() > 1e-6
        torch.testing.assert_close(y[[1, 4]], slow_loop(m, u[[1, 4]], reset=reset[[1, 4]])[0], rtol=1e-10, atol=1e-10)
    wy = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    wh = torch.randn(B, m.n_modes, generator=g, dtype=torch.complex128)
    leaves = [u] + list(m.parameters())
    grads = torch.autograd.grad((y * wy).sum() + (complex_state(h) * wh).real.sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * wy).sum() + (h_ref * wh).real.sum(), leaves)
    for gr, gr_ref in zip(grads, grads_ref):
        assert gr_ref.abs().max() > 0
        torch.testing.assert_close(gr, gr_ref, rtol=1e-9, atol=1e-9)


def test_segments_cover_every_step_once():
    """The segment plan: gathering with the buckets' indices and scattering back with inv returns every step, each
    bucket pads its segments to at most twice their length, and first/last are each row's first segment's length
    and last segment's start."""
    reset = episode_starts(8, 100, seed=9)
    plan = s4_mod._segments(reset)
    flat = torch.cat([torch.arange(800), torch.tensor([-1])])
    gathered = torch.cat([flat[idx] for _, _, idx in plan.buckets])
    torch.testing.assert_close(gathered[plan.inv], torch.arange(800))
    assert sum(count * lb for lb, count, _ in plan.buckets) < 2 * 800
    # padding (index 800) fills less than half of any segment's bucket row
    assert all(((idx.view(count, lb) < 800).sum(1) > lb // 2).all() for lb, count, idx in plan.buckets if lb > 1)
    assert plan.n_segments == int(reset[:, 1:].sum()) + 8
    for row in range(8):
        starts = [0] + [t for t in range(1, 100) if reset[row, t]]
        assert int(plan.first[row]) == (starts[1] if len(starts) > 1 else 100)
        assert int(plan.last[row]) == starts[-1]


def test_which_path_with_resets(monkeypatch):
    """With episode starts after the first step: the FFT path on the CPU from FFT_RESET_MIN_LEN[kind] steps (and
    fft_min_len), the scan below; a reset at the first step only is no episode start inside the sequence.
    Thresholds above fft_min_len for both kinds, so that each is tested (S4D's default equals fft_min_len)."""
    monkeypatch.setattr(s4_mod, "FFT_RESET_MIN_LEN", {"s4d": 24, "s5": 40})
    for kind, disc in KINDS[::2]:
        m = S4Layer(4, 8, kind=kind, discretization=disc)
        n = max(s4_mod.FFT_RESET_MIN_LEN[kind], m.fft_min_len)
        for T, inside in ((n - 1, True), (n, True), (m.fft_min_len, False)):
            reset = torch.zeros(2, T, dtype=torch.bool)
            reset[0, 0] = True
            reset[1, T // 2] = inside
            assert m._fft_ok(torch.zeros(2, T, 4), reset) == (T >= n or not inside), (kind, T, inside)
        m.fft_min_len = None
        assert not m._fft_ok(torch.zeros(2, n, 4), reset)


@pytest.mark.parametrize("kind,disc", KINDS, ids=IDS)
def test_step_matches_the_slow_loop(kind, disc):
    m = layer(kind, disc)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    h = torch.randn(2, m.n_modes, 2, generator=g, dtype=torch.float64)
    y_ref, h_ref = slow_loop(m, u, complex_state(h))
    ys = []
    with torch.no_grad():
        for t in range(6):
            y, h = m.step(u[:, t], h)
            ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(complex_state(h), h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_zoh_is_the_exact_solution_over_a_held_step(kind):
    """ZOH: a and b are the exact flow of h' = A h + B u over dt with u held, i.e. the exponential of the augmented
    matrix [[A dt, dt], [0, 0]] = [[a, g], [0, 1]] with b = g B, computed per mode by torch.linalg.matrix_exp."""
    m = layer(kind, "zoh")
    with torch.no_grad():
        m.log_dt.fill_(math.log(0.7))  # a large step, so that zoh and bilinear differ clearly
        _, a, b, _ = m.discrete(torch.float64)
        A, dt, B, _, _ = ssm_params(m)
        dt = dt[:, None].expand(A.shape) if kind == "s4d" else dt
        aug = torch.zeros(*A.shape, 2, 2, dtype=torch.complex128)
        aug[..., 0, 0], aug[..., 0, 1] = A * dt, dt.to(torch.complex128)
        flow = torch.linalg.matrix_exp(aug)
        gain = flow[..., 0, 1]
        torch.testing.assert_close(a, flow[..., 0, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b, gain * B if kind == "s4d" else gain[:, None] * B, rtol=1e-12, atol=1e-12)
        a_bilinear = (1 + dt * A / 2) / (1 - dt * A / 2)
        assert (a_bilinear - a).abs().max() > 1e-3  # the check above tells zoh from bilinear


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_bilinear_is_the_trapezoid_rule(kind):
    """Bilinear: one step solves h1 - h0 = dt/2 (A h0 + A h1) + dt B u (trapezoid rule, u held)."""
    m = layer(kind, "bilinear")
    with torch.no_grad():
        m.log_dt.fill_(math.log(0.7))
        A, dt, B, _, _ = ssm_params(m)
        g = torch.Generator().manual_seed(3)
        h0 = torch.randn(2, m.n_modes, 2, generator=g, dtype=torch.float64)
        u = torch.randn(2, 3, generator=g, dtype=torch.float64)
        _, h1 = m.step(u, h0)
        h0, h1 = complex_state(h0), complex_state(h1)
        if kind == "s4d":
            h0, h1, Bu, dt = h0.view(2, 3, -1), h1.view(2, 3, -1), B * u[..., None], dt[:, None]
        else:
            Bu = u.to(torch.complex128) @ B.T
        residual = h1 - h0 - dt / 2 * (A * h0 + A * h1) - dt * Bu
        assert residual.abs().max() < 1e-12
        # the same A, B, dt through zoh misses the trapezoid equation: the check tells the two apart
        m_zoh = layer(kind, "zoh")
        m_zoh.load_state_dict(m.state_dict())
        h1_zoh = complex_state(m_zoh.step(u, torch.view_as_real(h0.reshape(2, -1)))[1]).view(h1.shape)
        assert (h1_zoh - h0 - dt / 2 * (A * h0 + A * h1_zoh) - dt * Bu).abs().max() > 1e-4


@pytest.mark.parametrize("resets", [False, True])
def test_fft_path_equals_scan_path_at_length_and_in_float32(resets):
    """At T=300 from a state, float32, both kinds: the FFT path (taken) within float32 error of the scan path,
    without resets and with episode starts about every 50 steps (slow modes: dt down to 1e-3)."""
    for kind, disc in KINDS:
        torch.manual_seed(0)
        m = S4Layer(8, 16, kind=kind, discretization=disc)
        g = torch.Generator().manual_seed(4)
        u = torch.randn(3, 300, 8, generator=g)
        state = torch.randn(3, m.n_modes, 2, generator=g)
        reset = torch.rand(3, 300, generator=g) < 0.02 if resets else None
        assert not resets or reset[:, 1:].any()
        plan = m._fft_plan(u, reset)
        assert plan is not None and (plan.buckets is not None) == resets
        with torch.no_grad():
            y_fft, h_fft = m(u, state, reset)
            m.fft_min_len = None
            y_scan, h_scan = m(u, state, reset)
        torch.testing.assert_close(y_fft, y_scan, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h_fft, h_scan, rtol=1e-4, atol=1e-4)


def test_chunked_form_equals_scan_at_length_in_float32():
    """S4D's chunked form (default chunk, 300 steps: 18 full chunks and a partial one) from a state, float32, with
    episode starts about every 50 steps and slow modes, within float32 error of the scan: outputs, final state and
    the input's gradient."""
    for disc in ("zoh", "bilinear"):
        torch.manual_seed(0)
        m = S4Layer(8, 16, kind="s4d", discretization=disc, fft_min_len=None)
        g = torch.Generator().manual_seed(4)
        u = torch.randn(3, 300, 8, generator=g, requires_grad=True)
        h0 = complex_state(torch.randn(3, m.n_modes, 2, generator=g))
        reset = torch.rand(3, 300, generator=g) < 0.02
        log_a, a, b, C = m.discrete()
        outs = [m._scan(u, h0, a, b, C, reset), m._chunked(u, h0, log_a, b, C, reset)]
        gy = torch.randn(3, 300, 8, generator=g)
        grads = [torch.autograd.grad((y * gy).sum() + h.abs().sum(), u, retain_graph=True)[0] for y, h in outs]
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_s4d_on_cuda_takes_the_chunked_form_and_matches_the_cpu(monkeypatch):
    """On CUDA S4D runs the chunked form (never the per-step scan) and gives the CPU's outputs and gradients."""
    torch.manual_seed(0)
    m = S4Layer(16, 16, kind="s4d", fft_min_len=None)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 100, 16, generator=g)
    reset = torch.rand(2, 100, generator=g) < 0.05
    y_cpu, h_cpu = m(u, None, reset)
    gm_cpu = torch.autograd.grad(y_cpu.square().sum(), list(m.parameters()))

    def scan(*args, **kwargs):
        raise AssertionError("the scan path was taken")
    monkeypatch.setattr(S4Layer, "_scan", scan)
    mc = m.cuda()
    y, h = mc(u.cuda(), None, reset.cuda())
    gm = torch.autograd.grad(y.square().sum(), list(mc.parameters()))
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.cpu(), h_cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip(gm, gm_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind,disc", KINDS, ids=IDS)
@pytest.mark.parametrize("path", ["scan", "fft", "chunked"])
def test_gradcheck_through_resets_and_every_parameter(kind, disc, path, monkeypatch):
    """float64 gradcheck of (y, final state) in the input, the incoming state and every parameter (log dt, Re and
    Im of A, B, C, D), through resets at the first step, mid-segment (two, one step apart) and at the last step; on
    the FFT path the scan raises; S4D's chunked form in chunks of 3 (7 steps: the last chunk is partial)."""
    if path == "chunked" and kind != "s4d":
        pytest.skip("the chunked form is S4D's")
    m = layer(kind, disc, H=2, d_state=6 if kind == "s5" else 4, fft_min_len=1 if path == "fft" else None)
    if path == "fft":
        no_scan(monkeypatch)
    if path == "chunked":
        chunked(monkeypatch, chunk=3)
    g = torch.Generator().manual_seed(5)
    u = torch.randn(3, 7, 2, generator=g, dtype=torch.float64)
    state = torch.randn(3, m.n_modes, 2, generator=g, dtype=torch.float64)
    reset = torch.zeros(3, 7, dtype=torch.bool)
    reset[0, 0] = True
    reset[1, 3] = reset[1, 4] = reset[1, 6] = True
    names = [n for n, _ in m.named_parameters()]
    assert set(names) == {"log_dt", "log_neg_A_re", "A_im", "B", "C", "D"}

    def f(u, state, *params):
        y, h = functional_call(m, dict(zip(names, params)), (u, state, reset))
        return y, h

    leaves = [u, state] + [p.detach().clone() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, [t.requires_grad_() for t in leaves])


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_initialisation(kind):
    """Re(A) < 0, dt inside [dt_min, dt_max], A's imaginary parts as the paper's formula, and Re(A) still negative
    after a large optimiser step that pushes it up."""
    torch.manual_seed(0)
    N, H = 16, 8
    for init in ("lin", "inv"):
        m = S4Layer(H, N, kind=kind, s4d_init=init, dt_min=2e-3, dt_max=5e-2)
        A, dt = m.A(), m.dt().flatten()
        assert (A.real < 0).all() and torch.allclose(A.real, torch.full_like(A.real, -0.5))
        assert (dt >= 2e-3 * (1 - 1e-6)).all() and (dt <= 5e-2 * (1 + 1e-6)).all() and dt.std() > 0
        if kind == "s4d":
            n = torch.arange(N // 2, dtype=torch.float64)
            imag = math.pi * n if init == "lin" else N / math.pi * (N / (2 * n + 1) - 1)
            torch.testing.assert_close(A.imag.double(), imag.expand(H, -1), rtol=1e-6, atol=1e-5)
    opt = torch.optim.SGD(m.parameters(), lr=100.0)
    m.A().real.sum().neg().backward()  # gradient ascent on Re(A)
    opt.step()
    assert (m.A().real < 0).all()


def test_s5_init_is_the_diagonalised_normal_hippo():
    """hippo_n(n): V diag(lambda) V^H rebuilds HiPPO-LegS + p p^T written out here, lambda in conjugate pairs with
    real part -1/2; S5 keeps one of each pair, per block."""
    n = 8
    i = torch.arange(n, dtype=torch.float64)
    legs = torch.where(i[:, None] > i[None, :], -torch.sqrt((2 * i[:, None] + 1) * (2 * i[None, :] + 1)),
                       torch.where(i[:, None] == i[None, :], -(i[:, None] + 1), torch.zeros(n, n, dtype=torch.float64)))
    normal = legs + torch.sqrt(i[:, None] + 0.5) * torch.sqrt(i[None, :] + 0.5)
    lam, V = hippo_n(n)
    torch.testing.assert_close(V @ torch.diag(lam) @ V.conj().T, normal.to(torch.complex128), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lam.real, torch.full((n,), -0.5, dtype=torch.float64))
    torch.testing.assert_close(lam.imag, -lam.imag.flip(0))  # conjugate pairs
    torch.manual_seed(0)
    m = S4Layer(4, 2 * n, kind="s5", blocks=2)
    torch.testing.assert_close(m.A(torch.float64).imag, lam.imag[: n // 2].repeat(2).float().double())


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_an_impulse_is_still_seen_1000_steps_later_with_slow_modes(kind):
    """An impulse at t=0: with dt = 1e-3 the SSM's response (output without the skip D) at t=1000 is about half of
    that at t=0 (measured 0.52 for s4d, 0.65 for s5 at this seed); with dt = 0.1 it is gone (~1e-18). Forward (FFT
    path) and 1000 steps agree."""
    u = torch.zeros(1, 1001, 4, dtype=torch.float64)
    u[0, 0] = 1.0
    ratio = {}
    for dt in (1e-3, 1e-1):
        torch.manual_seed(0)
        m = S4Layer(4, 8, kind=kind, dt_min=dt, dt_max=dt).double()
        with torch.no_grad():
            y = m(u)[0] - m.D * u
        ratio[dt] = y[0, 1000].abs().max() / y[0, 0].abs().max()
    assert ratio[1e-3] > 0.4, ratio
    assert ratio[1e-1] < 1e-12, ratio
    with torch.no_grad():  # the slow model by steps
        h = m.initial_state(1, "cpu", torch.float64)
        m.log_dt.fill_(math.log(1e-3))
        y = m(u)[0]
        for t in range(1001):
            y_t, h = m.step(u[:, t], h)
    torch.testing.assert_close(y_t, y[:, -1], rtol=1e-8, atol=1e-12)
    assert y_t.abs().max() > 1e-5


def test_bad_input_is_a_clear_error():
    m = S4Layer(4, 8)
    with pytest.raises(ValueError, match=r"input must be \(B, T, H\) with H = 4"):
        m(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"reset must be a bool tensor \(B, T\) = \(2, 5\)"):
        m(torch.randn(2, 5, 4), reset=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset must be a bool tensor"):
        m(torch.randn(2, 5, 4), reset=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"state must be \(B, M, 2\) = \(2, 16, 2\)"):
        m(torch.randn(2, 5, 4), torch.zeros(2, 16))
    with pytest.raises(ValueError, match="H = 4"):
        m.step(torch.randn(2, 5), m.initial_state(2, "cpu"))
    with pytest.raises(ValueError, match="d_state=7 must be even"):
        S4Layer(4, 7)
    with pytest.raises(ValueError, match="multiple of 2 \\* blocks"):
        S4Layer(4, 12, kind="s5", blocks=4)
    with pytest.raises(ValueError, match="kind 'mamba' must be 's4d' or 's5'"):
        S4Backbone(4, 1, kind="mamba")
    with pytest.raises(ValueError, match="discretization 'euler'"):
        S4Backbone(4, 1, discretization="euler")
    b = S4Backbone(4, 1, d_state=8)
    with pytest.raises(ValueError, match="reset must be a bool tensor"):
        b(torch.randn(2, 5, 4), reset=torch.zeros(5, 2, dtype=torch.bool))


def test_ssm_parameters_take_no_weight_decay():
    """The SSM's own parameters (dt, A, B) are marked for the trainer's no-decay group; C is an ordinary weight."""
    m = S4Layer(4, 8)
    marked = {n for n, p in m.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert marked == {"log_dt", "log_neg_A_re", "A_im", "B", "D"}


def test_fft_min_len_default_and_backbone_layout():
    """The backbone's blocks hold two S4 layers each, with the default FFT threshold; the state has one (B, M, 2)
    tensor per S4 layer, block-major."""
    b = S4Backbone(8, 3, d_state=4, kind="s5")
    layers = [l for l in b.modules() if isinstance(l, S4Layer)]
    assert len(layers) == 6 and all(l.fft_min_len == s4_mod.FFT_MIN_LEN for l in layers)
    s = b.initial_state(5, "cpu")
    assert [tuple(t.shape) for t in s.ssm] == [(5, 2, 2)] * 6


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_the_ssm_runs_in_float32_under_autocast(kind):
    """Under bf16 autocast (CPU here, CUDA in training) the blocks' linear maps run in bf16 and the SSM in float32:
    forward and steps run, agree with each other, and stay near the float32 model (bf16 rounding only)."""
    torch.manual_seed(0)
    m = S4Backbone(16, 2, d_state=8, kind=kind).eval()
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        y32, _ = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16, _ = m(x)
            s, ys = m.initial_state(2, "cpu"), []
            for t in range(20):
                y_t, s = m.step(x[:, t], s)
                ys.append(y_t)
    assert all(t.dtype == torch.float32 for t in s.ssm)
    torch.testing.assert_close(torch.stack(ys, 1).float(), y16.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y16.float(), y32, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("kind", ["s4d", "s5"])
def test_backbone_with_resets_fft_equals_scan(kind, monkeypatch):
    """S4Backbone in float64 with episode starts inside the sequence and a given state: its layers (each planning
    the same segments) on the FFT path, the scan made to raise, give the scan path's outputs, final states and input
    gradient."""
    torch.manual_seed(0)
    fft = S4Backbone(8, 2, d_state=8, kind=kind).double()
    scan = S4Backbone(8, 2, d_state=8, kind=kind, fft_min_len=None).double()
    scan.load_state_dict(fft.state_dict())
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 40, 8, generator=g, dtype=torch.float64, requires_grad=True)
    state = S4State(tuple(torch.randn(6, l.n_modes, 2, generator=g, dtype=torch.float64) for l in fft._layers()))
    reset = episode_starts(6, 40, seed=12)
    y_scan, s_scan = scan(x, state, reset)
    (gx_scan,) = torch.autograd.grad(y_scan.square().sum(), x)
    no_scan(monkeypatch)
    y, s = fft(x, state, reset)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, y_scan, rtol=1e-9, atol=1e-9)
    for h, h_scan in zip(s.ssm, s_scan.ssm):
        torch.testing.assert_close(h, h_scan, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, gx_scan, rtol=1e-9, atol=1e-9)
