"""Triton kernels for the recurrences of `seqrl/kernels/scan.py` (CUDA only; call them through it).

The selective scan's forward and backward are Gluon kernels; on a Triton without Gluon this module still
imports (GLUON_MISSING says why they are unavailable, and launching one raises) and scan.py runs the
selective scan in PyTorch instead, with a warning. The step and linear-scan kernels are plain Triton.

Dimension letters: b batch, d channels, n state size, l length.

Selective scan, forward (a Gluon kernel: Triton with the layouts spelled out). A program owns one batch row,
32 * num_warps channels, one channel per thread, and one segment of the sequence; each thread keeps its
channel's n states in registers and walks the segment's steps one by one: per step and n, one exp2, two
multiplies and two fused multiply-adds (h = exp2(dt A_n) h + dt u B_n, y += C_n h), no shuffles and no scan
tree. Tiles of T steps of u, delta (and z) are loaded in 16-byte runs per thread, along l from (b, d, l) memory or
along d from (b, l, d) memory (CL: the kernels read whichever layout most of u, delta and z are in, z also as half
of a wider tensor, and write the output and the gradients in it, so that Mamba's projections need no transposed
copies), and moved to a thread per channel by `gl.convert_layout` (registers or shared memory, as the compiler
picks). B and C are read as (b, l, n) float32 (copied beforehand unless they are that already), so a tile's T x n
values are contiguous: they are copied into shared memory once per tile (16-byte loads), and each step reads its
n values from there, every thread alike (loading them from global memory at each step, just before use, left the
kernel waiting on those loads: docs/history.md, 2026-11-24). Plain Triton picks layouts itself, and the layout it
gave such a tile put threads along l (docs/history.md, 2026-11-24). Segments give the parallelism: a first pass
runs each segment from zero to its end state and its decay exp2(A sum dt), the linear-scan kernel below carries those
across segments, and a second pass runs each segment from its true start state, writing y. Memory traffic is
the inputs twice and the outputs once; the (b, l, d, n) states never exist in memory. When gradients are
wanted, the state every EVERY steps is stored, (b, d, l / EVERY, n); nothing else (the backward recomputes the
pre-gate output y from the states it recomputes anyway).

Backward (Gluon as well, the same layout: a program is one warp, 32 channels, a thread per channel, and one
segment). Tiles of T = EVERY steps are walked from the segment's last to its first. Per tile, each thread
recomputes its channel's states at the tile's steps from the one the forward stored at the tile's start and
keeps them in shared memory (the tile's B_t, C_t and its start state are there too, as in the forward); then
it walks the tile backwards, the adjoint dh_t = C_t dy_t + dA_{t+1} dh_{t+1} carried from step to step (and
tile to tile) in registers as p = dA_t dh_t, which gives the gradients of u, delta and A per thread with no
shuffles. The steps are loops at run time: unrolled, the compiler hoisted every step's exp2 and loads to the
top of the tile and ran out of registers. dB and dC sum over channels, which the warp's threads hold one each:
the states (for dC_t = sum_d dy_t h_t) and then the adjoints (for dB_t = sum_d dh_t dt_t u_t; the walk writes
them over states it no longer needs) are read back from shared memory in a layout with a step's channels
inside one thread and summed there. Each program writes its share, (b, d / 32, l, n) in float32, summed
afterwards (deterministic); dA, dD and delta-bias shares are per segment. The adjoint entering each segment
comes from a first pass over chunks of the segment length's largest power-of-two divisor (at most SEG): each
chunk's own share of the adjoint at its first step and its decay (`_selective_bwd_carries`, no scan per n: one
cumulative sum of dt, then an exp2 and a reduction per n), and the linear-scan kernel below carries them over
chunks, last first.

Groups (RESET = g > 0, `reset_every`): the decay is 0 at every step t with t % g == 0, so the state
restarts there; in the backward the adjoint then stops at those steps too (the decay into them is 0), and
the decay gradient vanishes by itself (h_t = x_t there).

Linear scan (S4D/S5, and the carries between segments above): a chunked associative scan over
h_t = a_t h_{t-1} + x_t, real or complex (complex tensors as interleaved real/imaginary float pairs); its
backward scans conj(a_{t+1}) over each chunk read in reverse (the states are stored).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # Gluon is experimental: Triton releases before it (and builds without it) lack the module
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    GLUON_MISSING = ""  # why the Gluon kernels are unavailable; "" when they are
except ImportError as e:
    GLUON_MISSING = f"Triton {getattr(triton, '__version__', '?')} has no Gluon ({type(e).__name__}: {e})"

    class _GluonKernelMissing:
        """Stands in for a Gluon kernel when Gluon is missing, so that the module (and its plain Triton
        kernels: the step, the linear scan) still imports; launching it raises. seqrl.kernels.scan never
        launches it: it sends the selective scan to the chunked PyTorch path instead, with a warning."""

        def __init__(self, fn):
            self.__name__ = fn.__name__

        def __getitem__(self, grid):
            raise RuntimeError(f"{self.__name__} is a Gluon kernel: {GLUON_MISSING}")

        __call__ = __getitem__

    class gluon:  # noqa: N801  the decorator's namespace, as `from triton.experimental import gluon` gives it
        jit = _GluonKernelMissing

    gl = None  # read only inside Gluon kernels' bodies and postponed annotations, never at import

# Tile sizes, chosen with experiments/bench_scan_ab.py --fwd/--bwd on an H100 (docs/kernels.md, "Tile configuration"). Decays use
# exp2 with A scaled by log2(e) = 1.4426950408889634 inside the kernels.
# "fwd": T steps per tile, num_warps per program, and segments enough for about PROGRAMS programs; each
# segment a multiple of SEG steps (finer segments, of T steps, were slower at l <= 1024: the first pass
# and the scan over segments cost more than the parallelism gave).
# "bwd": segments enough for about PROGRAMS programs, each a multiple of SEG steps (one-warp programs).
# (8192, 64) against (4096, 128): -17% at l=1024, +6% / +7% at l=4096 (float32 / bf16), even at l=16384
# (kernel time, b=8, d=256); Decision Mamba's shape (b=256, d=256, l=60) is one segment with either.
# "carries": the backward's first pass (plain Triton), BLOCK_D channels by one chunk per program.
# "fwd" T_FEW: the tile when fewer than FEW programs run (l=1024 at b=8: 512 programs, where 8-step tiles took the
# forward's kernels from 78 to 69 us in float32 and 68 to 60 in bf16, H100; with 2,048 programs and more, at
# Decision Mamba's shape and l=4096 in bf16, they were slower). The state every 4 or 16 steps (EVERY) made the
# backward slower at every size (docs/history.md, "Tiles and segments at Decision Mamba's shape").
CONFIG = {"fwd": dict(T=16, num_warps=1, PROGRAMS=4096, T_FEW=8, FEW=1024),
          "bwd": dict(PROGRAMS=8192, SEG=64),
          "carries": dict(BLOCK_D=4, num_warps=1),
          "lin": dict(BLOCK_D=8, BLOCK_L=256, num_warps=4)}
EVERY = 8  # the forward stores the state every EVERY steps: the backward's tiles start there
SEG = 128  # the forward's segments are multiples of SEG steps; the backward's carries chunks at most SEG


@triton.jit
def _compose(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): h -> a2 (a1 h + x1) + x2; also the adjoint recurrences, over chunks read in
    reverse."""
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _compose_complex(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    return (ar1 * ar2 - ai1 * ai2, ar1 * ai2 + ai1 * ar2,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@triton.jit
def _column(t, idx, j):
    """Column j of a 2-D register tile t (rows x cols), idx = arange over cols."""
    return tl.sum(tl.where(idx[None, :] == j, t, 0.0), axis=1)


@triton.jit
def _flip4(t):
    """t (rows, cols) with each run of 4 columns reversed in place; with 4 steps per thread along the columns
    this stays in registers, where a full reversal would move the tile into another layout."""
    return tl.reshape(tl.flip(tl.reshape(t, (t.shape[0], t.shape[1] // 4, 4)), 2), (t.shape[0], t.shape[1]))


@triton.jit
def _reversed_runs(BLOCK_L: tl.constexpr):
    """Offsets 0 .. BLOCK_L-1 in runs of 4 in step order, the runs from last to first: a tile loaded or
    stored at these offsets and turned by _flip4 is the chunk in reversed step order."""
    cols = tl.arange(0, BLOCK_L)
    return (BLOCK_L - 4) - (cols // 4) * 4 + cols % 4


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _channels(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, dn, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """Per-channel parameters of a block of channels, as float32: A (BLOCK_D, N), the delta bias and the
    skip D (BLOCK_D,), zeros when absent."""
    A = tl.load(A_ptr + dn, mask=mask_d[:, None], other=0.0).to(tl.float32)
    bias = tl.zeros(offs_d.shape, tl.float32)
    Dv = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A, bias, Dv


@triton.jit
def _step_size(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta from its raw input: the bias added, then softplus if asked. Returns (pre-softplus value, delta)."""
    if HAS_BIAS:
        raw = raw + bias
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return raw, dt


# ------------------------------------------------------------------------------ selective: fwd
@gluon.jit
def _decay(dt, A2, t, L, RESET: gl.constexpr):
    """exp2(dt A2) for a step t of (CH,) step sizes and (CH, N) scaled A: 0 where a group starts (t % RESET ==
    0), 1 on padding past the end (dt = 0 there)."""
    dA = gl.exp2(dt[:, None] * A2)
    if RESET > 0:
        dA = gl.where((t % RESET == 0) & (t < L), 0.0, dA)
    return dA


@gluon.jit
def _step_of(tile, cols, t: gl.constexpr):
    """Column t of a (channels, T) tile whose rows each sit in one thread: a register read once compiled
    (adding -0.0 is exact, so the sum folds away)."""
    return gl.sum(gl.where(cols[None, :] == t, tile, -0.0), axis=1)


@gluon.jit
def _stage_steps(smem, ptr, pid_b, t0, L, offs_f, N: gl.constexpr):
    """A tile's rows of a (b, l, n) float32 tensor, steps t0 .. t0 + T - 1 (0 past the end), into shared memory:
    smem and offs_f are flat, T * N values."""
    smem.store(gl.load(ptr + (pid_b * L + t0) * N + offs_f, mask=offs_f < (L - t0) * N, other=0.0))


@gluon.jit
def _program_indices(A_ptr, pid_b, d0, L, DM, CH: gl.constexpr, N: gl.constexpr, T: gl.constexpr, LH: gl.constexpr,
                     LT: gl.constexpr, LG: gl.constexpr, CL: gl.constexpr):
    """A program's channels and steps in each layout, shared by the forward and the backward: channels and n
    of the states (LH) with their flat (d, n) offsets, mask and A scaled by log2(e); channels and steps of a
    tile as loaded (LG, with where each channel's steps start: `_tile_at`) and as held a channel per thread
    (LT)."""
    offs_d = d0 + gl.arange(0, CH, layout=gl.SliceLayout(1, LH))
    offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, LH))
    dn = offs_d[:, None] * N + offs_n[None, :]
    mdn = (offs_d < DM)[:, None] & (offs_n < N)[None, :]
    A2 = gl.load(A_ptr + dn, mask=mdn, other=0.0) * 1.4426950408889634
    gd = d0 + gl.arange(0, CH, layout=gl.SliceLayout(1, LG))
    gcols = gl.arange(0, T, layout=gl.SliceLayout(0, LG))
    if CL:
        grow = pid_b * L * DM + gd[:, None]
    else:
        grow = (pid_b * DM + gd[:, None]) * L
    td = d0 + gl.arange(0, CH, layout=gl.SliceLayout(1, LT))
    cols = gl.arange(0, T, layout=gl.SliceLayout(0, LT))
    return offs_d, offs_n, dn, mdn, A2, gd, gcols, grow, td, cols


@gluon.jit
def _tile_at(grow, offs_g, DM, CL: gl.constexpr):
    """The offsets of a tile's elements (channels from grow, steps offs_g) in u, delta, the output and their
    gradients: rows along l ((b, d, l) memory) or, with CL, steps of DM channels ((b, l, d) memory)."""
    if CL:
        at = grow + offs_g[None, :] * DM
    else:
        at = grow + offs_g[None, :]
    return at


@gluon.jit
def _z_offsets(at, pid_b, gd, offs_g, L, z_step, CL: gl.constexpr):
    """Where a tile's z is: at `at` like u in (b, d, l) memory; with CL, steps z_step apart (Mamba's z is half of
    one projection's output, its steps rows of 2 d values)."""
    if CL:
        at = (pid_b * L + offs_g[None, :]) * z_step + gd[:, None]
    return at


@gluon.jit
def _selective_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, carry_ptr,
                   out_ptr, hlast_ptr, states_ptr, hend_ptr, decay_ptr, L, DM, seg_len, n_seg, n_states, z_step,
                   N: gl.constexpr, T: gl.constexpr, EVERY: gl.constexpr, FULL: gl.constexpr,
                   HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
                   HAS_H0: gl.constexpr, SAVE: gl.constexpr, RESET: gl.constexpr, CL: gl.constexpr):
    """One segment of one batch row for 32 * num_warps channels, a channel per thread (layouts below).
    FULL: from the segment's start state (h0, or slot seg - 1 of carry), write y (and with SAVE the state
    every EVERY steps); the last segment writes the final state. Else: the
    segment's end state from zero and its decay, exp2(A sum dt) or 0 where a group starts inside, at slot seg
    of hend, decay (b, d, n, n_seg)."""
    W: gl.constexpr = gl.num_warps()
    CH: gl.constexpr = 32 * W
    LH: gl.constexpr = gl.BlockedLayout([1, N], [32, 1], [W, 1], [1, 0])  # (CH, N) states: a thread's channel
    LT: gl.constexpr = gl.BlockedLayout([1, T], [32, 1], [W, 1], [1, 0])  # (CH, T) inputs: a thread's channel
    if CL:  # (CH, T) as loaded: 16-byte runs of a step's channels, or of a channel's steps
        LG: gl.constexpr = gl.BlockedLayout([4, 1], [8, 4], [W, 1], [0, 1])
    else:
        LG: gl.constexpr = gl.BlockedLayout([1, 4], [128 // T, T // 4], [W, 1], [1, 0])
    VH: gl.constexpr = gl.SliceLayout(1, LH)
    VT: gl.constexpr = gl.SliceLayout(1, LT)
    pid_b = gl.program_id(0)
    d0 = gl.program_id(1) * CH
    seg = gl.program_id(2)
    offs_d, offs_n, dn, mdn, A2, gd, gcols, grow, td, cols = _program_indices(A_ptr, pid_b, d0, L, DM, CH, N, T, LH,
                                                                             LT, LG, CL)
    bias = gl.zeros([CH], gl.float32, layout=VT)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + td, mask=td < DM, other=0.0).to(gl.float32)
    Dv = gl.zeros([CH], gl.float32, layout=gl.SliceLayout(1, LG))
    if HAS_D:
        Dv = gl.load(D_ptr + gd, mask=gd < DM, other=0.0).to(gl.float32)
    # the tile's B_t and C_t (n values a step, read by every thread alike)
    VEC: gl.constexpr = 4 if N >= 4 else N
    ROW: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    offs_f = gl.arange(0, T * N, layout=gl.BlockedLayout([VEC], [32], [W], [0]))
    Bs2 = gl.allocate_shared_memory(gl.float32, [T * N], ROW)
    Bs = Bs2._reinterpret(gl.float32, [T, N], ROW)
    Cs2 = gl.allocate_shared_memory(gl.float32, [T * N], ROW)
    Cs = Cs2._reinterpret(gl.float32, [T, N], ROW)
    VN: gl.constexpr = gl.SliceLayout(0, LH)
    h = gl.zeros([CH, N], gl.float32, layout=LH)
    if FULL:
        if seg > 0:
            h = gl.load(carry_ptr + (pid_b * DM * N + dn) * n_seg + seg - 1, mask=mdn, other=0.0)
        elif HAS_H0:
            h = gl.load(h0_ptr + pid_b * DM * N + dn, mask=mdn, other=0.0)
    t_begin = seg * seg_len
    t_end = gl.minimum(t_begin + seg_len, L)
    total = gl.zeros([CH], gl.float32, layout=VT)
    for t0 in range(t_begin, t_end, T):
        # the tile is loaded along l (whole sectors) and moved to a thread per channel
        offs_g = t0 + gcols
        at = _tile_at(grow, offs_g, DM, CL)
        m2 = (gd < DM)[:, None] & (offs_g < L)[None, :]
        ug = gl.load(u_ptr + at, mask=m2, other=0.0)
        u = gl.convert_layout(ug, LT).to(gl.float32)
        dt = gl.convert_layout(gl.load(delta_ptr + at, mask=m2, other=0.0), LT).to(gl.float32)
        _, dt = _step_size(dt, bias[:, None], HAS_BIAS, SOFTPLUS)
        dt = gl.where((td < DM)[:, None] & (t0 + cols < L)[None, :], dt, 0.0)  # padding: decay 1, input 0
        dtu = dt * u
        if not FULL:
            total += gl.sum(dt, axis=1)
        if HAS_Z and FULL:
            z = gl.load(z_ptr + _z_offsets(at, pid_b, gd, offs_g, L, z_step, CL), mask=m2, other=0.0).to(gl.float32)
        gl.thread_barrier()  # the previous tile's steps have read what is overwritten here
        _stage_steps(Bs2, B_ptr, pid_b, t0, L, offs_f, N)  # past the end, times dt u = 0
        if FULL:
            _stage_steps(Cs2, C_ptr, pid_b, t0, L, offs_f, N)  # y is not stored past the end
        gl.thread_barrier()
        ys = gl.zeros([CH, T], gl.float32, layout=LT)
        for t in gl.static_range(T):
            if SAVE:  # the state before every EVERY-th step, where the backward's tiles start
                if t % EVERY == 0:
                    gl.store(states_ptr + ((pid_b * DM + offs_d[:, None]) * n_states + (t0 + t) // EVERY) * N
                             + offs_n[None, :], h, mask=mdn & (t0 + t < L))
            dA = _decay(gl.convert_layout(_step_of(dt, cols, t), VH, assert_trivial=True), A2, t0 + t, L, RESET)
            x = gl.convert_layout(_step_of(dtu, cols, t), VH, assert_trivial=True)
            h = dA * h + x[:, None] * Bs.index(t).load(VN)[None, :]
            if FULL:
                y = gl.sum(h * Cs.index(t).load(VN)[None, :], axis=1)
                ys = gl.where(cols[None, :] == t, gl.convert_layout(y, VT, assert_trivial=True)[:, None], ys)
        if FULL:
            ys = gl.convert_layout(ys, LG)
            if HAS_D:
                ys += Dv[:, None] * ug.to(gl.float32)
            if HAS_Z:
                ys = gl.fdiv(ys * z, 1.0 + gl.exp2(z * -1.4426950408889634))
            gl.store(out_ptr + at, ys.to(out_ptr.dtype.element_ty), mask=m2)
    if FULL:
        if seg == n_seg - 1:
            gl.store(hlast_ptr + pid_b * DM * N + dn, h, mask=mdn)
    else:
        gl.store(hend_ptr + (pid_b * DM * N + dn) * n_seg + seg, h, mask=mdn)
        decay = gl.exp2(gl.convert_layout(total, VH, assert_trivial=True)[:, None] * A2)
        if RESET > 0:  # a group starting inside the segment cuts it off from the state before it
            decay = gl.where((t_end - 1) // RESET >= (t_begin + RESET - 1) // RESET, 0.0, decay)
        gl.store(decay_ptr + (pid_b * DM * N + dn) * n_seg + seg, decay, mask=mdn)


# ------------------------------------------------------------------------------ selective: bwd
@gluon.jit
def _sigmoid(x):
    return gl.fdiv(1.0, 1.0 + gl.exp2(x * -1.4426950408889634))


@gluon.jit
def _adjoint_step(p, dA_acc, h_prev, r, t0, L, A2, Bs, Cs, dts, dys, sbs, sas, hist, VH: gl.constexpr,
                  VN: gl.constexpr, RESET: gl.constexpr):
    """Step r of a tile in the backward's walk: the adjoint dh_r from p = dA_{r+1} dh_{r+1}; its share of the
    decay's gradient (with h_prev, the state before step r) and the per-step sums over n, written to sbs and
    sas; dh_r written over the state at slot r. Returns p = dA_r dh_r and the decay gradient's sum."""
    dt_r = dts.index(r).load(VH)
    dh = p + dys.index(r).load(VH)[:, None] * Cs.index(r).load(VN)[None, :]
    dA = _decay(dt_r, A2, t0 + r, L, RESET)
    p = dA * dh
    dAh = p * h_prev  # dL/d(dA_r) dA_r
    dA_acc += dAh * dt_r[:, None]
    sbs.index(r).store(gl.sum(dh * Bs.index(r).load(VN)[None, :], axis=1))
    sas.index(r).store(gl.sum(dAh * A2, axis=1))
    hist.index(r).store(dh)
    return p, dA_acc


@gluon.jit
def _selective_bwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr,
                   dhlast_ptr, carries_ptr, du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dz_ptr,
                   dh0_ptr, L, DM, seg_len, n_seg, n_states, n_chunks, share_stride, z_step,
                   N: gl.constexpr, T: gl.constexpr, SEG: gl.constexpr, RT: gl.constexpr, RN: gl.constexpr,
                   HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                   SOFTPLUS: gl.constexpr, HAS_DHLAST: gl.constexpr, RESET: gl.constexpr, CL: gl.constexpr):
    """One segment of one batch row for 32 channels (one warp), a channel per thread, in tiles of T steps
    from last to first. Per tile: the states at its steps are recomputed from the one the forward stored at
    its start and kept in shared memory (a thread writes and reads its own channel's rows); the adjoint
    dh_t = C_t dy_t + dA_{t+1} dh_{t+1} is walked backwards through them, one step at a time, and carried
    from tile to tile as p = dA_t dh_t. dB and dC sum over channels, which the threads hold one each, so
    they are summed from shared memory in a layout with the channels inside a thread (LR: RT threads along
    the steps, TC along the channels, RN along n): dC_t from the states, then dB_t from the adjoints, which
    the walk writes over the states it no longer needs. Each program writes its share, (b, d-block, l, n),
    summed over d-blocks afterwards. The adjoint entering the segment comes from `carries` (per SEG-step
    chunk, SEG here the carries' chunk: _selective_bwd_carries and a linear scan); shares of dA, dD and the
    delta bias's gradient are rows (b, n_seg) of share_stride values, (d, n), (d,) and (d,) in each, so that one
    reduction sums all three."""
    gl.static_assert(gl.num_warps() == 1, "one warp per program")
    CH: gl.constexpr = 32
    VEC: gl.constexpr = 4 if N >= 4 else N
    LH: gl.constexpr = gl.BlockedLayout([1, N], [32, 1], [1, 1], [1, 0])  # (CH, N): a thread's channel
    LT: gl.constexpr = gl.BlockedLayout([1, T], [32, 1], [1, 1], [1, 0])  # (CH, T): a thread's channel
    if CL:  # (CH, T) as loaded (as in the forward)
        LG: gl.constexpr = gl.BlockedLayout([4, 1], [8, 4], [1, 1], [0, 1])
    else:
        LG: gl.constexpr = gl.BlockedLayout([1, 4], [128 // T, T // 4], [1, 1], [1, 0])
    TC: gl.constexpr = 32 // (RT * RN)  # threads that share a step's channels
    LR: gl.constexpr = gl.BlockedLayout([CH // TC, N // RN], [RT * TC, RN], [1, 1], [1, 0])  # (T * CH, N)
    L3: gl.constexpr = gl.BlockedLayout([1, CH // TC, N // RN], [RT, TC, RN], [1, 1, 1], [2, 1, 0])  # as (T, CH, N)
    VH: gl.constexpr = gl.SliceLayout(1, LH)
    VN: gl.constexpr = gl.SliceLayout(0, LH)
    VT: gl.constexpr = gl.SliceLayout(1, LT)
    SR: gl.constexpr = gl.SliceLayout(1, L3)  # (T, N): sums over channels
    ROW: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    # hist: slot t the state after step t of the tile, overwritten by the adjoint at t once the walk is past it
    SW: gl.constexpr = gl.SwizzledSharedLayout(VEC, 2, 4, [1, 0])  # the rows of 8 channels' n values apart in banks
    hist2 = gl.allocate_shared_memory(gl.float32, [T * CH, N], SW)  # rows t * CH + c
    hist = hist2._reinterpret(gl.float32, [T, CH, N], SW)  # per step (the swizzle repeats every 8 rows)
    dts = gl.allocate_shared_memory(gl.float32, [T, CH], ROW)
    dtus2 = gl.allocate_shared_memory(gl.float32, [T * CH], ROW)
    dtus = dtus2._reinterpret(gl.float32, [T, CH], ROW)
    dys2 = gl.allocate_shared_memory(gl.float32, [T * CH], ROW)
    dys = dys2._reinterpret(gl.float32, [T, CH], ROW)
    sbs = gl.allocate_shared_memory(gl.float32, [T, CH], ROW)  # per step: sum over n of dh B
    sas = gl.allocate_shared_memory(gl.float32, [T, CH], ROW)  # per step: sum over n of A2 dh dA h_prev
    yps = gl.allocate_shared_memory(gl.float32, [T, CH], ROW)  # per step: sum over n of C h, the pre-gate y less D u
    # the tile's B_t and C_t (n values a step, read by every thread alike) and the state before its first step
    LF: gl.constexpr = gl.BlockedLayout([VEC], [32], [1], [0])  # (T * N,) as loaded: 16 bytes a thread
    offs_f = gl.arange(0, T * N, layout=LF)
    Bs2 = gl.allocate_shared_memory(gl.float32, [T * N], ROW)
    Bs = Bs2._reinterpret(gl.float32, [T, N], ROW)
    Cs2 = gl.allocate_shared_memory(gl.float32, [T * N], ROW)
    Cs = Cs2._reinterpret(gl.float32, [T, N], ROW)
    h0s = gl.allocate_shared_memory(gl.float32, [CH, N], SW)
    pid_b = gl.program_id(0)
    d0 = gl.program_id(1) * CH
    seg = gl.program_id(2)
    offs_d, offs_n, dn, mdn, A2, gd, gcols, grow, td, cols = _program_indices(A_ptr, pid_b, d0, L, DM, CH, N, T, LH,
                                                                             LT, LG, CL)
    rt = gl.arange(0, T, layout=gl.SliceLayout(1, SR))
    rn = gl.arange(0, N, layout=gl.SliceLayout(0, SR))
    part = (pid_b * gl.num_programs(1) + gl.program_id(1)) * L
    bias = gl.zeros([CH], gl.float32, layout=VT)
    bias_h = gl.zeros([CH], gl.float32, layout=VH)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + td, mask=td < DM, other=0.0).to(gl.float32)
        bias_h = gl.load(bias_ptr + offs_d, mask=offs_d < DM, other=0.0).to(gl.float32)
    Dv = gl.zeros([CH], gl.float32, layout=VT)
    if HAS_D:
        Dv = gl.load(D_ptr + td, mask=td < DM, other=0.0).to(gl.float32)
    t_begin = seg * seg_len
    t_end = gl.minimum(t_begin + seg_len, L)
    # the adjoint entering the segment, p = dA_{t_end} dh_{t_end} (past the last step the decay is 1)
    p = gl.zeros([CH, N], gl.float32, layout=LH)
    if seg == n_seg - 1:
        if HAS_DHLAST:
            p = gl.load(dhlast_ptr + pid_b * DM * N + dn, mask=mdn, other=0.0)
    else:
        q = gl.load(carries_ptr + (pid_b * DM * N + dn) * (n_chunks + 1) + n_chunks - t_end // SEG, mask=mdn,
                    other=0.0)
        if CL:
            at_end = (pid_b * L + t_end) * DM + offs_d
        else:
            at_end = (pid_b * DM + offs_d) * L + t_end
        _, dt_e = _step_size(gl.load(delta_ptr + at_end, mask=offs_d < DM, other=0.0).to(gl.float32), bias_h,
                             HAS_BIAS, SOFTPLUS)
        p = gl.exp2(dt_e[:, None] * A2) * q
        if RESET > 0:  # the step after the segment starts a group: nothing flows back across it
            p = gl.where(t_end % RESET == 0, 0.0, p)
    dA_acc = gl.zeros([CH, N], gl.float32, layout=LH)
    dD_acc = gl.zeros([CH], gl.float32, layout=VT)
    dbias_acc = gl.zeros([CH], gl.float32, layout=VT)
    n_tiles = (t_end - t_begin + T - 1) // T
    for i in range(n_tiles):
        t0 = t_begin + (n_tiles - 1 - i) * T
        offs_g = t0 + gcols
        at = _tile_at(grow, offs_g, DM, CL)
        m2 = (gd < DM)[:, None] & (offs_g < L)[None, :]
        u = gl.convert_layout(gl.load(u_ptr + at, mask=m2, other=0.0), LT).to(gl.float32)
        raw = gl.convert_layout(gl.load(delta_ptr + at, mask=m2, other=0.0), LT).to(gl.float32)
        raw, dt = _step_size(raw, bias[:, None], HAS_BIAS, SOFTPLUS)
        dt = gl.where((td < DM)[:, None] & (t0 + cols < L)[None, :], dt, 0.0)  # padding: decay 1, input 0
        g = gl.load(dout_ptr + at, mask=m2, other=0.0).to(gl.float32)
        if HAS_Z:
            z = gl.load(z_ptr + _z_offsets(at, pid_b, gd, offs_g, L, z_step, CL), mask=m2, other=0.0).to(gl.float32)
            sz = _sigmoid(z)
            gz = g * sz * (1.0 + z * (1.0 - sz))  # dz = gz y_pre, y_pre recomputed with the states below
            g = g * z * sz
        dy = gl.convert_layout(g, LT)
        if HAS_D:
            dD_acc += gl.sum(dy * u, axis=1)
        gl.thread_barrier()  # the previous tile's sums have read what is overwritten here
        for t in gl.static_range(T):  # the tile's vectors, a step per row
            dts.index(t).store(_step_of(dt, cols, t))
            dtus.index(t).store(_step_of(dt * u, cols, t))
            dys.index(t).store(_step_of(dy, cols, t))
        _stage_steps(Bs2, B_ptr, pid_b, t0, L, offs_f, N)  # past the end, times dt u = 0
        _stage_steps(Cs2, C_ptr, pid_b, t0, L, offs_f, N)  # and dy = 0
        h = gl.load(states_ptr + ((pid_b * DM + offs_d[:, None]) * n_states + t0 // T) * N + offs_n[None, :],
                    mask=mdn, other=0.0)
        h0s.store(h)
        gl.thread_barrier()
        # the states at the tile's steps
        for t in range(T):
            dA = _decay(dts.index(t).load(VH), A2, t0 + t, L, RESET)
            h = dA * h + dtus.index(t).load(VH)[:, None] * Bs.index(t).load(VN)[None, :]
            hist.index(t).store(h)
            if HAS_Z:
                yps.index(t).store(gl.sum(h * Cs.index(t).load(VN)[None, :], axis=1))
        gl.thread_barrier()
        if HAS_Z:  # the pre-gate output y_pre = C h + D u, which the forward does not store
            yp = gl.zeros([CH, T], gl.float32, layout=LT)
            for t in gl.static_range(T):
                yp = gl.where(cols[None, :] == t, yps.index(t).load(VT)[:, None], yp)
            if HAS_D:
                yp += Dv[:, None] * u
            gl.store(dz_ptr + at, (gz * gl.convert_layout(yp, LG)).to(dz_ptr.dtype.element_ty), mask=m2)
        # dC_t = sum over channels of dy_t h_t
        terms = hist2.load(LR) * dys2.load(gl.SliceLayout(1, LR))[:, None]
        share = gl.sum(gl.convert_layout(gl.reshape(terms, [T, CH, N]), L3, assert_trivial=True), axis=1)
        mr = (t0 + rt < L)[:, None] & (rn < N)[None, :]
        gl.store(dC_ptr + (part + t0 + rt[:, None]) * N + rn[None, :], share, mask=mr)
        gl.thread_barrier()  # the walk writes over the states
        # the adjoint, from the tile's last step to its first
        for k in range(T - 1):
            r = T - 1 - k
            p, dA_acc = _adjoint_step(p, dA_acc, hist.index(r - 1).load(LH), r, t0, L, A2, Bs, Cs, dts, dys, sbs,
                                      sas, hist, VH, VN, RESET)
        p, dA_acc = _adjoint_step(p, dA_acc, h0s.load(LH), 0, t0, L, A2, Bs, Cs, dts, dys, sbs, sas, hist, VH, VN,
                                  RESET)
        gl.thread_barrier()
        # dB_t = sum over channels of dh_t dt_t u_t
        terms = hist2.load(LR) * dtus2.load(gl.SliceLayout(1, LR))[:, None]
        share = gl.sum(gl.convert_layout(gl.reshape(terms, [T, CH, N]), L3, assert_trivial=True), axis=1)
        gl.store(dB_ptr + (part + t0 + rt[:, None]) * N + rn[None, :], share, mask=mr)
        s_b = gl.zeros([CH, T], gl.float32, layout=LT)
        s_a = gl.zeros([CH, T], gl.float32, layout=LT)
        for t in gl.static_range(T):
            s_b = gl.where(cols[None, :] == t, sbs.index(t).load(VT)[:, None], s_b)
            s_a = gl.where(cols[None, :] == t, sas.index(t).load(VT)[:, None], s_a)
        du = dt * s_b
        if HAS_D:
            du += Dv[:, None] * dy
        ddt = u * s_b + s_a * 0.6931471805599453  # A = A2 ln 2
        if SOFTPLUS:
            ddt = ddt * _sigmoid(raw)
        if HAS_BIAS:  # padding has no delta, but the adjoint runs through it
            dbias_acc += gl.sum(gl.where((t0 + cols < L)[None, :], ddt, 0.0), axis=1)
        gl.store(du_ptr + at, gl.convert_layout(du, LG).to(du_ptr.dtype.element_ty), mask=m2)
        gl.store(ddelta_ptr + at, gl.convert_layout(ddt, LG).to(ddelta_ptr.dtype.element_ty), mask=m2)
    share_row = (pid_b * n_seg + seg) * share_stride
    gl.store(dA_ptr + share_row + dn, dA_acc, mask=mdn)
    if HAS_D:
        gl.store(dD_ptr + share_row + td, dD_acc, mask=td < DM)
    if HAS_BIAS:
        gl.store(dbias_ptr + share_row + td, dbias_acc, mask=td < DM)
    if seg == 0:  # dA_0 dh_0, the initial state's adjoint (0 with groups: step 0 starts one)
        gl.store(dh0_ptr + pid_b * DM * N + dn, p, mask=mdn)


@triton.jit
def _selective_bwd_carries(delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, dhlast_ptr, x_ptr, m_ptr, L, DM,
                           stride_d, stride_l, z_stride_b, z_stride_l, n_chunks, N: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr, RESET: tl.constexpr):
    """Each chunk's own share of the adjoint at its first step t0, and the decay that carries the adjoint at
    the next chunk's first step t1 back to t0, per (d, n):
        local = sum_s w_s C_s dy_s,  w_s = prod_{t0 < r <= s} dA_r = exp2(a_n sum_{t0 < r <= s} dt_r),
        M = prod_{t0 < r <= t1} dA_r,
    so the adjoints at the chunks' first steps follow Q_c = local_c + M_c Q_{c+1}, a linear recurrence over
    chunks. No scan per n: one cumulative sum of dt per chunk, then an exp2 and a reduction per n. Written at
    slot n_chunks - c of (b, d, n, n_chunks + 1), so that scanning the slots in order walks the chunks backwards;
    chunk 0's programs also write slot 0: the final state's adjoint dhlast (0 without HAS_DHLAST), decay 0.
    delta and dout have strides stride_d and stride_l ((b, d, l) or (b, l, d) memory), z stride_d and its own."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    c = tl.program_id(2)
    mask_d = offs_d < DM
    bias = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    t0 = c * BLOCK_L
    t1 = t0 + BLOCK_L
    offs_l = t0 + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    m2 = mask_d[:, None] & mask_l[None, :]
    row = pid_b * DM * L + offs_d * stride_d
    at = row[:, None] + offs_l[None, :] * stride_l
    _, dt = _step_size(tl.load(delta_ptr + at, mask=m2, other=0.0).to(tl.float32), bias[:, None], HAS_BIAS, SOFTPLUS)
    dt = tl.where(m2, dt, 0.0)
    _, dt_first = _step_size(tl.load(delta_ptr + row + t0 * stride_l, mask=mask_d, other=0.0).to(tl.float32), bias,
                             HAS_BIAS, SOFTPLUS)
    _, dt_next = _step_size(tl.load(delta_ptr + row + t1 * stride_l, mask=mask_d & (t1 < L), other=0.0).to(tl.float32),
                            bias, HAS_BIAS, SOFTPLUS)
    dt_next = tl.where(t1 < L, dt_next, 0.0)  # past the end the decay is 1: dhlast enters the last step as it is
    span = tl.cumsum(dt, axis=1) - dt_first[:, None]  # sum over t0 < r <= s
    total = tl.sum(dt, axis=1) - dt_first + dt_next  # sum over t0 < r <= t1
    g = tl.load(dout_ptr + at, mask=m2, other=0.0).to(tl.float32)
    if HAS_Z:
        z_at = pid_b * z_stride_b + offs_d[:, None] * stride_d + offs_l[None, :] * z_stride_l
        z = tl.load(z_ptr + z_at, mask=m2, other=0.0).to(tl.float32)
        g = g * z * tl.sigmoid(z)
    if RESET > 0:  # a group start in (t0, s] cuts the adjoint's path from s back to t0
        open_ = (offs_l // RESET) == (t0 // RESET)
        open_end = (tl.minimum(t1, L - 1) // RESET) == (t0 // RESET)
    base = (pid_b * DM + offs_d) * N * (n_chunks + 1)
    slot = base + (n_chunks - c)
    if c == 0:
        for n in tl.static_range(N):
            q = tl.zeros(offs_d.shape, tl.float32)
            if HAS_DHLAST:
                q = tl.load(dhlast_ptr + (pid_b * DM + offs_d) * N + n, mask=mask_d, other=0.0)
            tl.store(x_ptr + base + n * (n_chunks + 1), q, mask=mask_d)
            tl.store(m_ptr + base + n * (n_chunks + 1), tl.zeros(offs_d.shape, tl.float32), mask=mask_d)
    for n in tl.static_range(N):
        a2_n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * 1.4426950408889634
        Cn = tl.load(C_ptr + (pid_b * L + offs_l) * N + n, mask=mask_l, other=0.0)  # C as (b, l, n) float32
        w = tl.exp2(a2_n[:, None] * span)
        if RESET > 0:
            w = tl.where(open_[None, :], w, 0.0)
        m = tl.exp2(a2_n * total)
        if RESET > 0:
            m = tl.where(open_end, m, 0.0)
        tl.store(x_ptr + slot + n * (n_chunks + 1), tl.sum(w * (Cn[None, :] * g), axis=1), mask=mask_d)
        tl.store(m_ptr + slot + n * (n_chunks + 1), m, mask=mask_d)


# ------------------------------------------------------------------------------ selective: step
@triton.jit
def _selective_step(h_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, hnew_ptr, DM,
                    N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    offs_n = tl.arange(0, N)
    dn = offs_d[:, None] * N + offs_n[None, :]
    md = mask_d[:, None]
    h = tl.load(h_ptr + pid_b * DM * N + dn, mask=md, other=0.0).to(tl.float32)
    A, bias, Dv = _channels(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, dn, HAS_BIAS, HAS_D)
    u = tl.load(u_ptr + pid_b * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    _, dt = _step_size(tl.load(delta_ptr + pid_b * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32),
                       bias, HAS_BIAS, SOFTPLUS)
    Bv = tl.load(B_ptr + pid_b * N + offs_n).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * N + offs_n).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bv[None, :]
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(hnew_ptr + pid_b * DM * N + dn, h, mask=md)
    tl.store(y_ptr + pid_b * DM + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------- linear scan
@triton.jit
def _linear_fwd(a_ptr, x_ptr, h0_ptr, h_ptr, L, DM, n_chunks,
                COMPLEX: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """h_t = a_t h_{t-1} + x_t from h0 (zeros without HAS_H0); complex tensors are (..., 2) float pairs, element
    stride 2."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    cols = tl.arange(0, BLOCK_L)
    S: tl.constexpr = 2 if COMPLEX else 1
    hr = tl.zeros((BLOCK_D,), dtype=tl.float32)
    hi = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_H0:
        hr = tl.load(h0_ptr + (pid_b * DM + offs_d) * S, mask=mask_d, other=0.0).to(tl.float32)
        if COMPLEX:
            hi = tl.load(h0_ptr + (pid_b * DM + offs_d) * S + 1, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * DM * L + offs_d[:, None] * L) * S
    for c in tl.range(0, n_chunks):
        offs_l = c * BLOCK_L + cols
        m2 = mask_d[:, None] & (offs_l[None, :] < L)
        p = row + offs_l[None, :] * S
        ar = tl.load(a_ptr + p, mask=m2, other=1.0).to(tl.float32)
        xr = tl.load(x_ptr + p, mask=m2, other=0.0).to(tl.float32)
        if COMPLEX:
            ai = tl.load(a_ptr + p + 1, mask=m2, other=0.0).to(tl.float32)
            xi = tl.load(x_ptr + p + 1, mask=m2, other=0.0).to(tl.float32)
            sar, sai, sxr, sxi = tl.associative_scan((ar, ai, xr, xi), 1, _compose_complex)
            outr = sxr + sar * hr[:, None] - sai * hi[:, None]
            outi = sxi + sar * hi[:, None] + sai * hr[:, None]
            tl.store(h_ptr + p, outr.to(h_ptr.dtype.element_ty), mask=m2)
            tl.store(h_ptr + p + 1, outi.to(h_ptr.dtype.element_ty), mask=m2)
            hr = _column(outr, cols, BLOCK_L - 1)
            hi = _column(outi, cols, BLOCK_L - 1)
        else:
            sar, sxr = tl.associative_scan((ar, xr), 1, _compose)
            outr = sxr + sar * hr[:, None]
            tl.store(h_ptr + p, outr.to(h_ptr.dtype.element_ty), mask=m2)
            hr = _column(outr, cols, BLOCK_L - 1)


@triton.jit
def _linear_bwd(a_ptr, h0_ptr, h_ptr, g_ptr, da_ptr, dx_ptr, dh0_ptr, L, DM, n_chunks,
                COMPLEX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """dh_t = g_t + conj(a_{t+1}) dh_{t+1}; dx_t = dh_t; da_t = dh_t conj(h_{t-1}); dh0 = conj(a_0) dh_0.
    Each chunk is read and written in reversed time order (runs of 4 turned by _flip4), so the adjoint is a
    forward scan."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    cols = tl.arange(0, BLOCK_L)
    S: tl.constexpr = 2 if COMPLEX else 1
    cr = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ci = tl.zeros((BLOCK_D,), dtype=tl.float32)
    row = (pid_b * DM * L + offs_d[:, None] * L) * S
    rev = _reversed_runs(BLOCK_L)
    h0r = tl.load(h0_ptr + (pid_b * DM + offs_d) * S, mask=mask_d, other=0.0).to(tl.float32)
    if COMPLEX:
        h0i = tl.load(h0_ptr + (pid_b * DM + offs_d) * S + 1, mask=mask_d, other=0.0).to(tl.float32)
    for k in tl.range(0, n_chunks):
        c = n_chunks - 1 - k
        offs_g = c * BLOCK_L + rev
        m2 = mask_d[:, None] & (offs_g[None, :] < L)
        mn = mask_d[:, None] & (offs_g[None, :] + 1 < L)
        mp = mask_d[:, None] & (offs_g[None, :] >= 1) & (offs_g[None, :] < L)
        first = (offs_g[None, :] == 0) & mask_d[:, None]
        p = row + offs_g[None, :] * S
        anr = _flip4(tl.load(a_ptr + p + S, mask=mn, other=0.0).to(tl.float32))
        gr = _flip4(tl.load(g_ptr + p, mask=m2, other=0.0).to(tl.float32))
        hpr = tl.where(first, h0r[:, None], tl.load(h_ptr + p - S, mask=mp, other=0.0).to(tl.float32))
        if COMPLEX:
            ani = -_flip4(tl.load(a_ptr + p + S + 1, mask=mn, other=0.0).to(tl.float32))  # conj
            gi = _flip4(tl.load(g_ptr + p + 1, mask=m2, other=0.0).to(tl.float32))
            hpi = tl.where(first, h0i[:, None], tl.load(h_ptr + p - S + 1, mask=mp, other=0.0).to(tl.float32))
            sar, sai, sxr, sxi = tl.associative_scan((anr, ani, gr, gi), 1, _compose_complex)
            dhr = sxr + sar * cr[:, None] - sai * ci[:, None]
            dhi = sxi + sar * ci[:, None] + sai * cr[:, None]
            cr = _column(dhr, cols, BLOCK_L - 1)  # dh at the chunk's first step, for the chunk before
            ci = _column(dhi, cols, BLOCK_L - 1)
            dhr = _flip4(dhr)  # back to the layout of the addresses
            dhi = _flip4(dhi)
            tl.store(dx_ptr + p, dhr.to(dx_ptr.dtype.element_ty), mask=m2)
            tl.store(dx_ptr + p + 1, dhi.to(dx_ptr.dtype.element_ty), mask=m2)
            tl.store(da_ptr + p, (dhr * hpr + dhi * hpi).to(da_ptr.dtype.element_ty), mask=m2)  # dh conj(h_prev)
            tl.store(da_ptr + p + 1, (dhi * hpr - dhr * hpi).to(da_ptr.dtype.element_ty), mask=m2)
        else:
            sar, sxr = tl.associative_scan((anr, gr), 1, _compose)
            dhr = sxr + sar * cr[:, None]
            cr = _column(dhr, cols, BLOCK_L - 1)
            dhr = _flip4(dhr)
            tl.store(dx_ptr + p, dhr.to(dx_ptr.dtype.element_ty), mask=m2)
            tl.store(da_ptr + p, (dhr * hpr).to(da_ptr.dtype.element_ty), mask=m2)
    # dh0 = conj(a_0) dh_0
    a0r = tl.load(a_ptr + (pid_b * DM * L + offs_d * L) * S, mask=mask_d, other=0.0).to(tl.float32)
    if COMPLEX:
        a0i = tl.load(a_ptr + (pid_b * DM * L + offs_d * L) * S + 1, mask=mask_d, other=0.0).to(tl.float32)
        tl.store(dh0_ptr + (pid_b * DM + offs_d) * S, a0r * cr + a0i * ci, mask=mask_d)
        tl.store(dh0_ptr + (pid_b * DM + offs_d) * S + 1, a0r * ci - a0i * cr, mask=mask_d)
    else:
        tl.store(dh0_ptr + (pid_b * DM + offs_d) * S, a0r * cr, mask=mask_d)


# ------------------------------------------------------------------------------------ wrappers
def _opt(t):
    return None if t is None else t.contiguous()


def _channels_last(t) -> bool:
    """Whether a (b, d, l) tensor is (b, l, d) memory: the transpose of a contiguous (b, l, d) tensor."""
    return t.transpose(1, 2).is_contiguous()


def _step_stride(t) -> int | None:
    """The distance between a (b, d, l) tensor's steps when each step's channels are contiguous and a batch row's
    steps follow one another (the transpose of a (b, l, d) tensor, or of a slice along d of a wider one, as Mamba's
    z is half of a projection's output); None otherwise."""
    if _channels_last(t):
        return t.shape[1]
    b, d, l = t.shape
    return t.stride(2) if t.stride(1) == 1 and t.stride(2) >= d and t.stride(0) == l * t.stride(2) else None


def _sequence_layout(u, delta, z) -> tuple[bool, int | None]:
    """The layout the kernels read u, delta and z in (and write the output and the gradients in): (b, l, d) memory
    (True) when most of them already are (Mamba's projections give delta and z so), else (b, d, l) memory; and z's
    `_step_stride` (None without z)."""
    z_step = None if z is None else _step_stride(z)
    votes = [_channels_last(u), _channels_last(delta)] + ([] if z is None else [z_step is not None])
    return 2 * sum(votes) > len(votes), z_step


def _in_layout(t, channels_last: bool):
    """t in the kernels' layout: itself when it already is, else one copy."""
    if t is None or not channels_last:
        return _opt(t)
    return t if _channels_last(t) else t.transpose(1, 2).contiguous().transpose(1, 2)


def _steps_major(t):
    """B or C, (b, n, l), as (b, l, n) float32 and contiguous, the layout the kernels read (a step's n values
    together): a view when it already is one (the transpose of a contiguous (b, l, n) float32 tensor), else
    one copy (Decision Mamba's B and C are bf16 slices of one projection under autocast: one copy, not the two
    before 2026-12-06)."""
    t = t.transpose(1, 2)
    if t.dtype == torch.float32 and t.is_contiguous():
        return t
    return torch.empty(t.shape, device=t.device, dtype=torch.float32).copy_(t)


def _segments(l: int, rows: int, programs: int, unit: int) -> tuple[int, int]:
    """(number, length) of segments of a sequence of l steps: multiples of `unit` steps, enough of them for
    about `programs` programs when `rows` programs (batch rows x channel blocks) share each segment."""
    n_seg = max(1, min(triton.cdiv(l, unit), programs // rows))
    seg_len = triton.cdiv(triton.cdiv(l, n_seg), unit) * unit
    return triton.cdiv(l, seg_len), seg_len


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset_every, grad_enabled):
        cl, z_step = _sequence_layout(u, delta, z)
        u, delta = _in_layout(u, cl), _in_layout(delta, cl)
        if z is not None and not (cl and z_step):
            z = _in_layout(z, cl)  # dense, in the kernels' layout (a copy unless it already is)
        z_step = (z_step or u.shape[1]) if cl and z is not None else 1  # (b, l, d) memory: z's steps z_step apart
        A = A.contiguous().float()
        D, delta_bias = _opt(D), _opt(delta_bias)
        h0 = None if h0 is None else h0.contiguous().float()
        b, d, l = u.shape
        n = A.shape[1]
        cfg = CONFIG["fwd"]
        blocks = triton.cdiv(d, 32 * cfg["num_warps"])
        n_seg, seg_len = _segments(l, b * blocks, cfg["PROGRAMS"], SEG)
        save = grad_enabled and any(ctx.needs_input_grad[:9])  # needs_input_grad ignores torch.no_grad()
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not a tensor of zeros
        out = torch.empty_like(u)  # u's strides
        f32 = dict(device=u.device, dtype=torch.float32)
        hlast = torch.empty(b, d, n, **f32)
        states = torch.empty(b, d, triton.cdiv(l, EVERY), n, **f32) if save else hlast
        Bt, Ct = _steps_major(B), _steps_major(C)
        opt = lambda t: u if t is None else t  # noqa: E731
        tile = cfg["T"] if b * blocks * n_seg >= cfg["FEW"] else cfg["T_FEW"]
        flags = dict(N=n, T=tile, EVERY=EVERY, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_H0=h0 is not None, RESET=reset_every,
                     CL=cl, num_warps=cfg["num_warps"])
        args = (u, delta, A, Bt, Ct, opt(D), opt(z), opt(delta_bias), opt(h0))
        carry = hlast
        if n_seg > 1:
            # each segment's end state from zero and its decay, then a linear scan over the segments gives
            # every segment's start state (slot s - 1 for segment s)
            hend, decay = torch.empty(2, b, d * n, n_seg, **f32).unbind(0)
            _selective_fwd[(b, blocks, n_seg)](*args, hlast, out, hlast, states, hend, decay, l, d, seg_len,
                                               n_seg, states.shape[2], z_step, FULL=False, SAVE=False, **flags)
            carry = _linear_scan(decay, hend, None if h0 is None else h0.view(b, d * n))
        _selective_fwd[(b, blocks, n_seg)](*args, carry, out, hlast, states, hlast, hlast, l, d, seg_len,
                                           n_seg, states.shape[2], z_step, FULL=True, SAVE=bool(save), **flags)
        if save:
            ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias, states)
            ctx.softplus, ctx.has_h0, ctx.reset_every = softplus, h0 is not None, reset_every
            ctx.cl, ctx.z_step = cl, z_step
            ctx.dtypes = B.dtype, C.dtype
        return out, hlast

    @staticmethod
    def backward(ctx, dout, dhlast):
        u, delta, A, Bt, Ct, D, z, delta_bias, states = ctx.saved_tensors
        b, d, l = u.shape
        n = A.shape[1]
        dout = torch.zeros_like(u) if dout is None else _in_layout(dout, ctx.cl)
        f32 = dict(device=u.device, dtype=torch.float32)
        cfg = CONFIG["bwd"]
        blocks = triton.cdiv(d, 32)  # one-warp programs
        n_seg, seg_len = _segments(l, b * blocks, cfg["PROGRAMS"], cfg["SEG"])
        chunk = min(SEG, seg_len & -seg_len)  # the carries' chunks: a power of two that divides seg_len
        n_chunks = triton.cdiv(l, chunk)
        opt = lambda t, dummy=u: dummy if t is None else t  # noqa: E731
        flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
                     RESET=ctx.reset_every)
        dhlast = None if dhlast is None else dhlast.contiguous().float()
        carries = None
        if n_seg > 1:
            # the adjoint at each SEG-step chunk's first step: each chunk's own share and decay, then a linear
            # scan over the chunks, last first; slot 0 holds dhlast
            x, m = torch.empty(2, b, d * n, n_chunks + 1, **f32).unbind(0)
            ck = CONFIG["carries"]
            strides = (1, d, l * ctx.z_step, ctx.z_step) if ctx.cl else (l, 1, d * l, 1)  # (d, l) and z's (b, l)
            _selective_bwd_carries[(b, triton.cdiv(d, ck["BLOCK_D"]), n_chunks)](
                delta, A, Ct, opt(z), opt(delta_bias), dout, opt(dhlast), x, m, l, d, *strides, n_chunks, N=n,
                BLOCK_D=ck["BLOCK_D"], BLOCK_L=chunk, HAS_DHLAST=dhlast is not None, num_warps=ck["num_warps"],
                **flags)
            carries = _linear_scan(m, x, None)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)  # their strides
        dz = torch.empty_like(u, dtype=z.dtype) if z is not None else None  # dense, as u (z may be a view)
        # one buffer for the shares of dA, dD and the delta bias (summed by one reduction), one for dB and dC's
        stride = d * (n + (D is not None) + (delta_bias is not None))
        shares = torch.empty(b * n_seg, stride, **f32)
        dA, dD, dbias = shares[:, :d * n], shares[:, d * n:], shares[:, stride - d:]
        bc_shares = torch.empty(2, b, blocks, l, n, **f32)
        dB, dC = bc_shares.unbind(0)
        dh0 = torch.empty(b, d, n, **f32)
        rn = min(32, max(1, n // 4))  # dB, dC are summed with RN threads along n and RT along the tile's steps
        rt = min(EVERY, 32 // rn)
        _selective_bwd[(b, blocks, n_seg)](
            u, delta, A, Bt, Ct, opt(D), opt(z), opt(delta_bias), states, dout, opt(dhlast, dh0),
            opt(carries, dh0), du, ddelta, dA, dB, dC, dD, dbias, opt(dz), dh0, l, d, seg_len, n_seg,
            states.shape[2], n_chunks, stride, ctx.z_step, N=n, T=EVERY, SEG=chunk, RT=rt, RN=rn, HAS_D=D is not None,
            HAS_DHLAST=dhlast is not None, CL=ctx.cl, num_warps=1, **flags)
        sums = shares.sum(0)
        bc = bc_shares.sum(2)  # (2, b, l, n)
        if ctx.dtypes[0] == ctx.dtypes[1]:
            bc = bc.to(ctx.dtypes[0])  # one cast for both
        dB, dC = (t.transpose(1, 2).to(dtype) for t, dtype in zip(bc.unbind(0), ctx.dtypes))
        return (du, ddelta, sums[:d * n].view(d, n), dB, dC,
                sums[d * n:d * n + d].to(D.dtype) if D is not None else None,
                dz, sums[stride - d:].to(delta_bias.dtype) if delta_bias is not None else None,
                dh0 if ctx.has_h0 else None, None, None, None)


# Opaque to torch.compile: Inductor compiles a user kernel again from its source as plain Triton, which fails on
# Gluon kernels (a NameError on `gl` or a CompilationError, seen with torch 2.11 and Triton 3.6). A compiled loss
# breaks its graph here and runs the scan as it runs eagerly.
@torch.compiler.disable
def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset_every=0):
    if GLUON_MISSING:
        raise RuntimeError(f"the selective scan's Triton kernels are Gluon kernels: {GLUON_MISSING}")
    fwd = CONFIG["fwd"]
    if EVERY % 4 or any(t % EVERY or SEG % t for t in (fwd["T"], fwd["T_FEW"])) or CONFIG["bwd"]["SEG"] % EVERY:
        raise RuntimeError("CONFIG: EVERY must be a multiple of 4, the forward's T and T_FEW and the backward's SEG "
                           "of EVERY, and SEG of T and T_FEW")
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, bool(delta_softplus), int(reset_every),
                                  torch.is_grad_enabled())


def selective_step_triton(h, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d = u.shape
    n = A.shape[1]
    h = h.contiguous().float()
    y = torch.empty_like(u)
    hnew = torch.empty_like(h)
    BLOCK_D = 32
    c = lambda t: u if t is None else t.contiguous()  # noqa: E731
    _selective_step[(b, triton.cdiv(d, BLOCK_D))](h, u.contiguous(), delta.contiguous(), A.contiguous(),
                                                  B.contiguous(), C.contiguous(), c(D), c(z), c(delta_bias), y,
                                                  hnew, d, N=n, BLOCK_D=BLOCK_D, HAS_D=D is not None,
                                                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                                                  SOFTPLUS=bool(delta_softplus), num_warps=1)
    return y, hnew


def _as_real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _linear_scan(a, x, h0):
    """The forward of the linear scan, outside autograd: contiguous inputs (h0 None: zeros), h of x's shape."""
    b, d, l = x.shape
    h = torch.empty_like(x)
    cfg = CONFIG["lin"]
    _linear_fwd[(b, triton.cdiv(d, cfg["BLOCK_D"]))](_as_real(a), _as_real(x), _as_real(x if h0 is None else h0),
                                                     _as_real(h), l, d, triton.cdiv(l, cfg["BLOCK_L"]),
                                                     COMPLEX=x.is_complex(), HAS_H0=h0 is not None,
                                                     BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"],
                                                     num_warps=cfg["num_warps"])
    return h


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, h0):
        a, x, h0 = a.contiguous(), x.contiguous(), h0.contiguous()
        h = _linear_scan(a, x, h0)
        ctx.save_for_backward(a, h0, h)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h0, h = ctx.saved_tensors
        g = g.contiguous()
        b, d, l = h.shape
        da, dx, dh0 = torch.empty_like(a), torch.empty_like(h), torch.empty_like(h0)
        cfg = CONFIG["lin"]
        grid = (b, triton.cdiv(d, cfg["BLOCK_D"]))
        _linear_bwd[grid](_as_real(a), _as_real(h0), _as_real(h), _as_real(g), _as_real(da), _as_real(dx),
                          _as_real(dh0), l, d, triton.cdiv(l, cfg["BLOCK_L"]), COMPLEX=h.is_complex(),
                          BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"])
        return da, dx, dh0


def linear_scan_triton(a, x, h0):
    return _LinearScanFn.apply(a, x, h0)
