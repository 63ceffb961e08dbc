"""Linear recurrences: the one entry point per recurrence, whatever the device.

Dimension letters: b batch, d channels, n state size per channel, l sequence length.

Two recurrences, each with a sequence form, a one-step form, and three paths that give the same
answers (tests/test_scan.py holds them to the reference loop in float64, values and gradients):

- ``selective_scan``: the S6 scan of Mamba (Gu & Dao 2023). With dt = softplus(delta + delta_bias)
  (or delta + delta_bias), per channel d and state n:

      h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,    y_t = C_t . h_t + D u_t,    out_t = y_t silu(z_t)

  u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,); state h (b, d, n). Only the shapes
  matter: u, delta and z may be transposes of (b, l, d) tensors, as a model's projections give them, and on
  CUDA the kernels then read them in place (z also as half of a wider projection) and return the output in
  that layout.
- ``linear_scan``: the diagonal recurrence of S4D/S5, ``h_t = a_t h_{t-1} + x_t`` over (b, d, l),
  real or complex; ``linear_step`` is its one-step form, h (b, d).

Paths, picked by the inputs' device:

- CUDA: the Triton kernels of ``seqrl/kernels/triton_scan.py``. The state stays in registers; the state
  every 8 steps (and with a gate the pre-gate output) is kept for the backward pass, never (b, l, d, n). The
  selective scan's forward and backward are Gluon kernels (Triton's experimental dialect with explicit
  layouts); the step and the linear scan are plain Triton. Without Triton every recurrence, and with a
  Triton that lacks Gluon the selective scan, runs the PyTorch path below instead: the first such call
  warns (``KernelFallbackWarning``, once per recurrence) and ``kernel_status(device)`` records the path
  each recurrence takes and why, for a run's metadata.
- CPU (and any other device): a chunked PyTorch scan. The state is carried from chunk to
  chunk of ``chunk`` steps; forward and backward are one ``torch.autograd.Function`` that keeps only
  chunk-start states and recomputes a chunk's states when the backward pass reaches it, so memory is
  O(b d l + b d n (l / chunk + chunk)) rather than the O(b d l n) an autograd loop keeps. Inside a
  chunk the selective scan's decays, inputs, outputs and gradients are whole-chunk tensor operations
  and only the recurrence steps, one vectorised update per step: a parallel scan would do log2(chunk)
  times the arithmetic, which a CPU with few cores pays in full (6x slower than the loop at b=8,
  d=256, n=16).
  The linear scan, whose steps are small (b d elements), runs each chunk as a parallel Hillis-Steele
  scan over the pairs (decay, input), which multiplies decays only, so nothing overflows. Once a step
  holds PARALLEL_BELOW elements or more it goes one step at a time over the whole sequence instead,
  forward and backward, on time-major (l, b, d) copies (none when the inputs already are time-major
  views), so each step reads and writes contiguous memory: read along l from (b, d, l) memory, a step
  touches one cache line per element (5x slower forward at b=8, d=2048, l=1024, complex64). Its
  output is then a (b, d, l) view of (l, b, d) memory. With the backward over the same layout and
  conjugation by negating imaginary halves (``_conj``), forward + backward at that size takes 0.8 s
  from time-major inputs (as S4Layer builds them), against 2.8 s for the chunked loop before
  (1 thread, 2026-12-04).
  ``linear_step`` is one elementwise multiply-add, plain PyTorch on every device: there is no kernel
  to fall back from, so it is not in ``kernel_status``.
- Reference: the plain loop (``*_ref``), for tests and nothing else.

Both sequence forms take an initial state ``h0`` and can return the final state, so a long sequence
can be run segment by segment (truncated BPTT, long rollouts) with the same result as in one go.
``selective_scan(..., reset_every=g)`` instead restarts the state from zero at every step t with
t % g == 0 (its decay is taken as 0): each group of g steps is scanned on its own, in one pass over
the whole sequence. Decision Mamba's fine-grained branch scans (return, state, action) triplets this
way. Run as (b l / 3) separate sequences of 3 steps, each would be padded to a 16-step tile on the GPU:
over 5x the work.
``selective_step`` and ``linear_step`` are the one-step updates for a batch of environments (rollouts).
"""

from __future__ import annotations

import warnings
from types import ModuleType

import torch
import torch.nn.functional as F

CHUNK = 16  # steps per chunk of the CPU path: the state is carried across chunks
PARALLEL_BELOW = 4096  # elements per step under which a chunk's steps run as a parallel scan


# ------------------------------------------------------------------------------------ paths
class KernelFallbackWarning(RuntimeWarning):
    """A recurrence on CUDA runs the PyTorch path because its Triton kernels cannot be imported."""


# causal_conv: seqrl/kernels/conv.py; norm: seqrl/kernels/norm.py
KERNELS = ("selective_scan", "selective_step", "linear_scan", "causal_conv", "norm")
# Process-wide, set once: the outcome of importing the Triton kernels (on the first CUDA call, so a CPU run never
# imports Triton), and the recurrences whose fallback has been warned about.
_triton: tuple[ModuleType | None, str] | None = None
_warned: set[str] = set()


def _triton_kernels() -> tuple[ModuleType | None, str]:
    """(seqrl.kernels.triton_scan, "") or (None, why it cannot be imported)."""
    global _triton
    if _triton is None:
        try:
            from seqrl.kernels import triton_scan

            _triton = triton_scan, ""
        except ImportError as e:
            _triton = None, ("Triton is not installed" if e.name == "triton" else
                             f"Triton failed to import ({type(e).__name__}: {e})")
    return _triton


def _route(name: str, device: torch.device) -> tuple[str, str, ModuleType | None]:
    """(path, why the fast path is not taken or "", the Triton module on a Triton path) for a recurrence."""
    slow = "pytorch" if name in ("selective_step", "causal_conv", "norm") else "pytorch-chunked"
    if device.type != "cuda":
        return slow, "", None
    kernels, why = _triton_kernels()
    if kernels is None:
        return slow, why, None
    if name == "selective_scan":  # forward and backward are Gluon kernels
        return ("pytorch-chunked", kernels.GLUON_MISSING, None) if kernels.GLUON_MISSING else \
            ("triton-gluon", "", kernels)
    return "triton", "", kernels


def _kernels(name: str, device: torch.device) -> ModuleType | None:
    """The Triton module if recurrence `name` runs Triton kernels on `device`, else None (for "causal_conv"
    and "norm", whose kernels are in triton_conv and triton_norm: whether Triton imports). A missing fast path
    on CUDA warns once per name (KernelFallbackWarning); `kernel_status` records it."""
    _, why, kernels = _route(name, device)
    if why and name not in _warned:
        _warned.add(name)
        warnings.warn(f"seqrl.kernels: {name} on CUDA runs in PyTorch, not Triton: {why}", KernelFallbackWarning,
                      stacklevel=3)
    return kernels


def kernel_status(device: torch.device | str) -> dict[str, str]:
    """Which path each recurrence (and Mamba's causal conv, seqrl/kernels/conv.py, and the norms,
    seqrl/kernels/norm.py) takes for tensors on `device`, for a run's metadata.

    {"selective_scan": path, "selective_step": path, "linear_scan": path, "causal_conv": path, "norm": path},
    paths being "triton-gluon" (the selective scan's Gluon kernels), "triton", "pytorch-chunked" (the CPU path,
    on any device) and "pytorch" (the one-step update's, the conv's and the norms' CPU paths). Where one on
    CUDA falls back to PyTorch, "<name>.fallback" holds the reason (Triton missing, Triton without Gluon), the
    one its first call warns with. On CUDA the first call imports Triton, once per process; the answer does not
    change after that.
    """
    device = torch.device(device)
    out = {}
    for name in KERNELS:
        path, why, _ = _route(name, device)
        out[name] = path
        if why:
            out[f"{name}.fallback"] = why
    return out


# ----------------------------------------------------------------------------------- reference
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None,
                       reset_every=0):
    """The plain loop over l, in the inputs' dtype. Returns (out (b, d, l), h_last (b, d, n))."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if h0 is None else h0.to(u.dtype)
    ys = []
    for t in range(l):
        if reset_every and t % reset_every == 0:
            h = torch.zeros_like(h)
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) if ys else u.new_zeros(b, d, 0)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def linear_scan_ref(a, x, h0=None):
    """h_t = a_t h_{t-1} + x_t by a loop over the last axis. Returns h (b, d, l)."""
    h = torch.zeros_like(x[..., 0]) if h0 is None else h0.to(x.dtype)
    hs = []
    for t in range(x.shape[-1]):
        h = a[..., t] * h + x[..., t]
        hs.append(h)
    return torch.stack(hs, -1) if hs else torch.zeros_like(x)


# ------------------------------------------------------------------------------ chunked (CPU)
def _scan_chunk(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + x_t along dim 2 (a, x: (b, d, T); h0: (b, d)), by Hillis-Steele:
    after the round with offset k, (a_t, x_t) compose the 2k steps ending at t."""
    T = a.shape[2]
    k = 1
    while k < T:
        x = torch.cat([x[:, :, :k], x[:, :, k:] + a[:, :, k:] * x[:, :, :-k]], 2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], 2)
        k *= 2
    return x + a * h0.unsqueeze(2)


def _chunk_terms(u, dt, A, B, t0, t1, reset_every):
    """Decays exp(dt A) (0 where a group starts) and inputs dt u B of steps t0..t1-1, each (b, d, T, n)."""
    dtc = dt[:, :, t0:t1, None]
    decay = torch.exp(dtc * A[:, None])
    if reset_every:
        decay = decay * (torch.arange(t0, t1, device=u.device) % reset_every != 0).to(decay.dtype)[:, None]
    return decay, (dtc * u[:, :, t0:t1, None]) * B[:, None, :, t0:t1].transpose(2, 3)


def _chunk_states(decay, x, h):
    """States after each step of a chunk, (b, d, T, n), from the state h before it: one update a step."""
    hs = torch.empty_like(x)
    for k in range(x.shape[2]):
        h = torch.addcmul(x[:, :, k], decay[:, :, k], h)
        hs[:, :, k] = h
    return hs


class _SelectiveScanChunked(torch.autograd.Function):
    """Core S6 recurrence: (u, dt, A, B, C, h0) -> (ys = C.h (b, d, l), h_last (b, d, n)).

    Per chunk, the decays, inputs, outputs and gradients are whole-chunk tensor operations; only the
    recurrence itself steps, one vectorised update (`addcmul`) per step. The forward keeps the state at
    every chunk start; the backward recomputes one chunk's states at a time and runs the adjoint
    recurrence dh_t = C_t g_t + decay_{t+1} dh_{t+1} backwards through it."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk, reset_every):
        l = u.shape[2]
        ys = torch.empty_like(u)
        h, starts = h0, []
        for t0 in range(0, l, chunk):
            t1 = min(l, t0 + chunk)
            starts.append(h)
            hs = _chunk_states(*_chunk_terms(u, dt, A, B, t0, t1, reset_every), h)
            ys[:, :, t0:t1] = (hs * C[:, None, :, t0:t1].transpose(2, 3)).sum(-1)
            h = hs[:, :, -1].clone()  # saved for backward: a view would keep the whole chunk alive
        ctx.save_for_backward(u, dt, A, B, C, h0, *starts)
        ctx.chunk, ctx.reset_every = chunk, reset_every
        return ys, h

    @staticmethod
    def backward(ctx, g_ys, g_h):
        u, dt, A, B, C, h0, *starts = ctx.saved_tensors
        chunk, l = ctx.chunk, u.shape[2]
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dB, dC, dA_par = torch.empty_like(B), torch.empty_like(C), torch.zeros_like(A)
        g_ys = torch.zeros_like(u) if g_ys is None else g_ys
        dh_next = torch.zeros_like(h0) if g_h is None else g_h  # dL/dh from the steps after the chunk
        for i in reversed(range(len(starts))):
            t0, t1 = i * chunk, min(l, (i + 1) * chunk)
            decay, x = _chunk_terms(u, dt, A, B, t0, t1, ctx.reset_every)
            hs = _chunk_states(decay, x, starts[i])
            g = g_ys[:, :, t0:t1]
            src = g[..., None] * C[:, None, :, t0:t1].transpose(2, 3)  # C_t g_t, (b, d, T, n)
            dh = torch.empty_like(src)
            for k in reversed(range(t1 - t0)):
                dh_next = src[:, :, k] + dh_next
                dh[:, :, k] = dh_next
                dh_next = dh_next * decay[:, :, k]
            dAh = dh * (hs - x)  # dL/d(decay) * decay, since decay_t h_{t-1} = h_t - x_t
            dtc, uc = dt[:, :, t0:t1], u[:, :, t0:t1]
            dhB = (dh * B[:, None, :, t0:t1].transpose(2, 3)).sum(-1)  # (b, d, T)
            ddt[:, :, t0:t1] = dhB * uc + (dAh * A[:, None]).sum(-1)
            du[:, :, t0:t1] = dhB * dtc
            dA_par += (dAh * dtc[..., None]).sum((0, 2))
            dB[:, :, t0:t1] = torch.einsum("bdtn,bdt->bnt", dh, dtc * uc)
            dC[:, :, t0:t1] = torch.einsum("bdtn,bdt->bnt", hs, g)
        return du, ddt, dA_par, dB, dC, dh_next, None, None


def _steps_time_major(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + x_t along dim 0 of (l, b, d) a, x (steps of unit stride, see _time_major)
    from h0 (b, d): one multiply-add a step. Returns (l, b, d), contiguous."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = h0
    for t in range(x.shape[0]):
        h = torch.addcmul(x[t], a[t], h, out=out[t])
    return out


def _conj(t: torch.Tensor) -> torch.Tensor:
    """conj(t) as a new tensor (t itself when real; still expanded where t is). PyTorch's own conjugation on the CPU
    (resolving a .conj() view, conj_physical, or a multiply taking a .conj() view) runs about 10x slower than a
    multiply of the same size (2026-12-04, torch 2.13, complex64): negating the imaginary halves of a copy does not."""
    if not t.is_complex():
        return t
    base = t[tuple(slice(None) if st else slice(0, 1) for st in t.stride())]  # the distinct elements
    r = torch.view_as_real(base.resolve_conj()).clone()
    r[..., 1].neg_()
    return torch.view_as_complex(r).expand(t.shape)


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """(b, d, l) -> (l, b, d) whose steps are rows of unit stride: a view when t already is (built time-major,
    or a decay expanded over b and l), else a contiguous copy."""
    t = t.permute(2, 0, 1)
    return t if t.stride(-1) == 1 else t.contiguous()


class _LinearScanChunked(torch.autograd.Function):
    """h = linear_scan(a, x, h0) on the CPU path: a parallel scan per chunk while a step is small, else one step at
    a time over time-major copies (module docstring). The backward is the same recurrence run backwards:
    dh_t = g_t + conj(a_{t+1}) dh_{t+1}, then da_t = dh_t conj(h_{t-1}), dx_t = dh_t, dh0 = conj(a_0) dh_0 (PyTorch's
    convention for complex gradients)."""

    @staticmethod
    def forward(ctx, a, x, h0, chunk):
        b, d, l = x.shape
        ctx.chunk = chunk
        ctx.sequential = b * d >= PARALLEL_BELOW
        if ctx.sequential:  # (l, b, d): a copy unless the caller built a and x time-major
            at = _time_major(a)
            out = _steps_time_major(at, _time_major(x), h0)
            ctx.save_for_backward(at, out, h0)
            return out.permute(1, 2, 0)
        hs, h = [], h0
        for t0 in range(0, l, chunk):
            sl = slice(t0, t0 + chunk)
            hc = _scan_chunk(a[:, :, sl], x[:, :, sl], h)
            hs.append(hc)
            h = hc[:, :, -1]
        out = torch.cat(hs, 2) if hs else torch.zeros_like(x)
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.sequential:
            at, out, h0 = ctx.saved_tensors  # (l, b, d)
            l = at.shape[0]
            if l == 0:
                return torch.zeros_like(g), torch.zeros_like(g), torch.zeros_like(h0), None
            gt, atc = _time_major(g), _conj(at)
            dh = torch.empty_like(gt)
            d_next = dh[-1].copy_(gt[-1])
            for t in reversed(range(l - 1)):
                d_next = torch.addcmul(gt[t], atc[t + 1], d_next, out=dh[t])
            da = torch.empty_like(dh)
            torch.mul(dh[0], _conj(h0), out=da[0])
            torch.mul(dh[1:], _conj(out[:-1]), out=da[1:])
            return da.permute(1, 2, 0), dh.permute(1, 2, 0), atc[0] * dh[0], None
        a, out, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, :, 1:], torch.zeros_like(a[:, :, :1])], 2).conj()
        dh = _LinearScanChunked.apply(a_next.flip(2), g.flip(2), torch.zeros_like(h0), ctx.chunk).flip(2)
        h_prev = torch.cat([h0[:, :, None], out[:, :, :-1]], 2)
        return dh * h_prev.conj(), dh, a[:, :, 0].conj() * dh[:, :, 0], None


# ------------------------------------------------------------------------------- entry points
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None,
                   return_state=False, chunk: int = CHUNK, reset_every: int = 0):
    """The S6 selective scan (module docstring). Returns out (b, d, l) in u's dtype, and with
    ``return_state`` also the final state (b, d, n) in float32 (float64 for float64 inputs on the CPU).
    ``reset_every`` g > 0: the state restarts from zero at every g-th step, from step 0 (h0 must be None)."""
    b, d, l = u.shape
    n = A.shape[1]
    _check_selective(u, delta, A, B, C, D, z, delta_bias, h0)
    if not isinstance(reset_every, int) or reset_every < 0:
        raise ValueError(f"selective_scan: reset_every must be an int >= 0, got {reset_every!r}")
    if reset_every and h0 is not None:
        raise ValueError("selective_scan: h0 is unused with reset_every (step 0 starts a group from zero); pass None")
    kernels = _kernels("selective_scan", u.device)
    if kernels is not None:
        out, h = kernels.selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset_every)
        return (out, h) if return_state else out
    dtype = u.dtype
    f = (lambda t: None if t is None else t.float()) if dtype in (torch.float16, torch.bfloat16) else (lambda t: t)
    u, delta, A, B, C, D, z, delta_bias = map(f, (u, delta, A, B, C, D, z, delta_bias))
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h0 = u.new_zeros(b, d, n) if h0 is None else h0.to(u.dtype)
    y, h = _SelectiveScanChunked.apply(u, dt, A, B, C, h0, chunk, reset_every)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y.to(dtype), h) if return_state else y.to(dtype)


def selective_step(h, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One step of the selective scan for a batch: h (b, d, n); u, delta, z (b, d); B, C (b, n).
    Returns (out (b, d) in u's dtype, h_new (b, d, n) in float32, or float64 for float64 inputs off CUDA).
    One fused kernel on CUDA."""
    kernels = _kernels("selective_step", u.device)
    if kernels is not None:
        return kernels.selective_step_triton(h, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    acc = torch.promote_types(u.dtype, torch.float32)
    f = lambda t: None if t is None else t.to(acc)  # noqa: E731
    h, u_, delta, A, B, C, D, z, delta_bias = map(f, (h, u, delta, A, B, C, D, z, delta_bias))
    dt = delta if delta_bias is None else delta + delta_bias
    if delta_softplus:
        dt = F.softplus(dt)
    h = torch.exp(dt[..., None] * A) * h + (dt * u_)[..., None] * B[:, None]
    y = (h * C[:, None]).sum(-1)
    if D is not None:
        y = y + D * u_
    if z is not None:
        y = y * F.silu(z)
    return y.to(u.dtype), h


def linear_scan(a, x, h0=None, chunk: int = CHUNK):
    """All states of the diagonal recurrence h_t = a_t h_{t-1} + x_t: a, x (b, d, l), real or complex
    (same dtype); h0 (b, d) or None for zeros. Returns h (b, d, l); the final state is h[..., -1].
    A step with a_t = 0 restarts the state from x_t (an episode start, for S4D/S5 backbones)."""
    if a.shape != x.shape or a.dim() != 3:
        raise ValueError(f"linear_scan: a {tuple(a.shape)} and x {tuple(x.shape)} must both be (b, d, l)")
    if a.dtype != x.dtype:
        raise ValueError(f"linear_scan: a is {a.dtype} and x is {x.dtype}; they must match")
    h0 = torch.zeros_like(x[..., 0]) if h0 is None else h0.to(x.dtype)
    if h0.shape != x.shape[:2]:
        raise ValueError(f"linear_scan: h0 {tuple(h0.shape)} must be (b, d) = {tuple(x.shape[:2])}")
    kernels = _kernels("linear_scan", x.device)
    if kernels is not None:
        if not x.is_complex():
            return kernels.linear_scan_triton(a, x, h0)
        # the kernels read complex tensors as float pairs (view_as_real), which a lazily conjugated tensor
        # (a.conj(), or the gradient of a .conj() taken downstream) cannot give: resolve the conjugation first
        h = kernels.linear_scan_triton(a.resolve_conj(), x.resolve_conj(), h0.resolve_conj())
        if h.requires_grad:
            h.register_hook(torch.Tensor.resolve_conj)
        return h
    return _LinearScanChunked.apply(a, x, h0, chunk)


def linear_step(h, a, x):
    """One step of the linear scan for a batch (rollouts): h_new = a h + x. a, x (b, d), real or complex (same
    dtype); h (b, d), cast to x's dtype. Returns h_new (b, d). Plain PyTorch on every device (module docstring)."""
    if a.shape != x.shape or a.dim() != 2:
        raise ValueError(f"linear_step: a {tuple(a.shape)} and x {tuple(x.shape)} must both be (b, d)")
    if a.dtype != x.dtype:
        raise ValueError(f"linear_step: a is {a.dtype} and x is {x.dtype}; they must match")
    if h.shape != x.shape:
        raise ValueError(f"linear_step: h {tuple(h.shape)} must be (b, d) = {tuple(x.shape)}")
    if h.is_complex() and not x.is_complex():
        raise ValueError(f"linear_step: h is {h.dtype} and x is {x.dtype}: a complex state needs complex a and x")
    return torch.addcmul(x, a, h.to(x.dtype))


def _check_selective(u, delta, A, B, C, D, z, delta_bias, h0):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (b, d, l), got {tuple(u.shape)}")
    b, d, l = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    want = {"delta": (delta, (b, d, l)), "B": (B, (b, n, l)), "C": (C, (b, n, l)), "D": (D, (d,)),
            "z": (z, (b, d, l)), "delta_bias": (delta_bias, (d,)), "h0": (h0, (b, d, n))}
    for name, (t, shape) in want.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must be {shape}, got {tuple(t.shape)}")
