"""Triton kernels for the recurrences of `seqrl/kernels/scan.py` (CUDA only; call them through it).

Dimension letters: b batch, d channels, n state size, l length.

Selective scan, forward (a Gluon kernel: Triton with the layouts spelled out). A program owns one batch
row, 32 * num_warps channels, one channel per thread, and one segment of the sequence; each thread keeps
its channel's n states in registers and walks the segment's steps one by one: per step and n, one exp2, two
multiplies and two fused multiply-adds (h = exp2(dt A_n) h + dt u B_n, y += C_n h), no shuffles and no scan
tree. Tiles of T steps of u, delta (and z) are loaded along l, whole 16-byte runs per thread, and moved to
a thread per channel by `gl.convert_layout` (registers or shared memory, as the compiler picks); B and C
are copied beforehand to (b, l, n) float32, so a step's n values are one contiguous read that every thread
of the program shares. Plain Triton picks layouts itself, and the layout it gave such a tile put threads
along l (docs/benchmarks.md, 2026-11-24). Segments give the parallelism: a first pass runs each segment
from zero to its end state and its decay exp2(A sum dt), the linear-scan kernel below carries those across
segments, and a second pass runs each segment from its true start state, writing y. Memory traffic is the
inputs twice and the outputs once; the (b, l, d, n) states never exist in memory. When gradients are
wanted, the state every EVERY steps is stored, (b, d, l / EVERY, n), and with a gate z the pre-gate
output y, (b, d, l).

Backward (plain Triton). A program owns one batch row and BLOCK_D channels, in chunks of BLOCK_L steps.
Chunks are walked from last to first, and for each n in turn (a loop at run time): the adjoint
dh_t = C_t dy_t + dA_{t+1} dh_{t+1} runs as a forward associative scan over the chunk read in reverse
(continued across chunks by a carried (BLOCK_D, n) adjoint, which enters through the scan's first input),
and goes back into step order by `tl.flip` in registers (a sequence of one chunk: through a (BLOCK_D, BLOCK_L)
scratch tile per program, a store and a load, which measured faster there; FLIP_FROM); then the chunk's
states are recomputed, in step order, from the stored chunk-start state. Triton's reverse scan
(`reverse=True`) costs several times the warp shuffles of a forward one. Reversed tiles are loaded as
runs of 4 steps in step order with the runs in reverse, and each run is turned in registers (`_flip4`):
a fully reversed address pattern made the compiler pick a layout whose scan goes through shared memory.
dA_{t+1} is read straight from memory (delta shifted by one), and dA_t h_{t-1} = h_t - x_t gives the decay
gradient without the previous state. Gradients of B and C sum over channels, which several programs
share: each program writes its share, (b, d-block, n, l) in float32, and they are summed afterwards
(deterministic, and faster than atomic adds here: 12.9 against 17.4 ms forward+backward at L=16384). The
gradient of A is written per batch row and summed afterwards.

Backward, every chunk at once (long sequences in narrow batches: CHUNK_PARALLEL_FROM, CHUNK_PARALLEL_BD).
Walking the chunks in turn leaves b * d / BLOCK_D programs however long the sequence. The adjoint at each
chunk's first step instead follows a linear recurrence over chunks, Q_c = local_c + M_c Q_{c+1}, whose terms
need no scan per n (`_selective_bwd_carries`); the linear-scan kernel runs it, and then one program per chunk
(`_selective_bwd_chunk`) does what the sequential kernel does for that chunk, entered by Q_{c+1}. Its
programs are one warp of BLOCK_D x 128 and walk SUBTILES channel tiles each, adding their dB and dC shares, so
the shares are (b, d / (BLOCK_D SUBTILES), n, l); it always turns the adjoint in registers. The two kernels
share their per-tile code (`_bwd_inputs`, `_bwd_state`).

Groups (RESET = g > 0, `reset_every`): the decay is 0 at every step t with t % g == 0, so the state
restarts there; in the backward the adjoint then stops at those steps too (the decay into them is 0), and
the decay gradient vanishes by itself (h_t = x_t there).

Linear scan (S4D/S5): the same chunked associative scan over h_t = a_t h_{t-1} + x_t, real or
complex (complex tensors as interleaved real/imaginary float pairs); its backward scans conj(a_{t+1})
over each chunk read in reverse, as the selective one does, and needs no scratch (the states are stored).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# Tile sizes, chosen by experiments/bench_scan.py --sweep on an H100 (docs/benchmarks.md). Decays use
# exp2 with A scaled by log2(e) = 1.4426950408889634 inside the kernels.
# "fwd": T steps per tile, num_warps per program, and segments enough for about PROGRAMS programs; each
# segment a multiple of EVERY steps (finer segments, of T steps, were slower at l <= 1024: the first pass
# and the scan over segments cost more than the parallelism gave).
# "bwd" walks each sequence's chunks in turn; "bwd_chunks" runs every chunk at once (one-warp programs of
# SUBTILES tiles each), for sequences of at least CHUNK_PARALLEL_FROM chunks in batches of at most
# CHUNK_PARALLEL_BD channels (b * d), where it was measured faster: at b * d = 2048, 32 and 128 chunks,
# -18% and -24%; at 8 chunks it was slower (+55%), and wider batches were not measured. Both backward
# tiles were chosen again once the backward's loop over n ran at run time (docs/benchmarks.md). "bwd" is held
# to 168 registers a thread (it would take 253): -24% at Decision Mamba's shape (b=256, d=256, l=60), -9% at
# b=32, l=1024, +14% at b=8, l=1024 in bf16 (d=256), within 4% at the other sizes tried. Caps from 168 down
# to 64 made "fwd" slower at every size tried, and at 168 "bwd_chunks" gained 2% in float32 and lost 13% in
# bf16 (l=16384), so those stay uncapped.
CONFIG = {"fwd": dict(T=16, num_warps=1, PROGRAMS=4096),
          "bwd": dict(BLOCK_D=2, BLOCK_L=128, num_warps=1, maxnreg=168),
          "bwd_chunks": dict(BLOCK_D=4, BLOCK_L=128, num_warps=1, SUBTILES=4),
          "lin": dict(BLOCK_D=8, BLOCK_L=256, num_warps=4)}
CHUNK_PARALLEL_FROM = 32
CHUNK_PARALLEL_BD = 2048
# The backward turns each n's adjoint back into time order in registers (`tl.flip`) rather than through a scratch
# tile in memory: the every-chunk kernel always (its time -8% / -12% in float32 / bf16 at l=16384, -9% / -12% at
# l=4096), the walking one from FLIP_FROM chunks (-19% / -23% at l=1024, b=8). At Decision Mamba's shape, one
# chunk (b=256, d=256, l=60), the flip made the walking kernel 14-21% slower, so one chunk keeps the scratch.
FLIP_FROM = 2
EVERY = 128  # the forward stores the state every EVERY steps for the backward, whose chunks are multiples of it


def _tiles(kind: str, l: int, d: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of a selective-scan kernel for sequences of length l: CONFIG's for long ones;
    for l shorter than the chunk, the chunk shrinks to the next power of two (at least 16) and BLOCK_D
    grows by the same factor (up to d), so a tile holds as many elements and fewer lanes idle on padding
    (a 3-token scan in 128-step chunks was 97% padding). The backward kernels' tiles (the forward's are
    CONFIG["fwd"]); one chunk of any length reads the state stored at step 0."""
    cfg = CONFIG[kind]
    bl = min(cfg["BLOCK_L"], max(16, triton.next_power_of_2(l)))
    bd = min(cfg["BLOCK_D"] * (cfg["BLOCK_L"] // bl), max(cfg["BLOCK_D"], triton.next_power_of_2(d)))
    return bd, bl


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
def _step_of(tile, cols, t: gl.constexpr):
    """Column t of a (channels, T) tile whose rows each sit in one thread: a register read once compiled
    (adding -0.0 is exact, so the sum folds away)."""
    return gl.sum(gl.where(cols[None, :] == t, tile, -0.0), axis=1)


@gluon.jit
def _selective_fwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, carry_ptr,
                   out_ptr, ypre_ptr, hlast_ptr, states_ptr, hend_ptr, decay_ptr, L, DM, seg_len, n_seg, n_states,
                   N: gl.constexpr, T: gl.constexpr, EVERY: gl.constexpr, FULL: gl.constexpr,
                   HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
                   HAS_H0: gl.constexpr, SAVE: gl.constexpr, RESET: gl.constexpr):
    """One segment of one batch row for 32 * num_warps channels, a channel per thread (layouts below).
    FULL: from the segment's start state (h0, or slot seg - 1 of carry), write y (and with SAVE the state
    every EVERY steps, and with a gate the pre-gate y); the last segment writes the final state. Else: the
    segment's end state from zero and its decay, exp2(A sum dt) or 0 where a group starts inside, at slot seg
    of hend, decay (b, d, n, n_seg)."""
    W: gl.constexpr = gl.num_warps()
    CH: gl.constexpr = 32 * W
    LH: gl.constexpr = gl.BlockedLayout([1, N], [32, 1], [W, 1], [1, 0])  # (CH, N) states: a thread's channel
    LT: gl.constexpr = gl.BlockedLayout([1, T], [32, 1], [W, 1], [1, 0])  # (CH, T) inputs: a thread's channel
    LG: gl.constexpr = gl.BlockedLayout([1, 4], [128 // T, T // 4], [W, 1], [1, 0])  # (CH, T) as loaded
    VH: gl.constexpr = gl.SliceLayout(1, LH)
    VT: gl.constexpr = gl.SliceLayout(1, LT)
    pid_b = gl.program_id(0)
    d0 = gl.program_id(1) * CH
    seg = gl.program_id(2)
    offs_d = d0 + gl.arange(0, CH, layout=VH)
    offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, LH))
    dn = offs_d[:, None] * N + offs_n[None, :]
    mdn = (offs_d < DM)[:, None] & (offs_n < N)[None, :]
    A2 = gl.load(A_ptr + dn, mask=mdn, other=0.0) * 1.4426950408889634
    gd = d0 + gl.arange(0, CH, layout=gl.SliceLayout(1, LG))
    gcols = gl.arange(0, T, layout=gl.SliceLayout(0, LG))
    grow = (pid_b * DM + gd[:, None]) * L
    td = d0 + gl.arange(0, CH, layout=VT)
    cols = gl.arange(0, T, layout=gl.SliceLayout(0, LT))
    bias = gl.zeros([CH], gl.float32, layout=VT)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + td, mask=td < DM, other=0.0).to(gl.float32)
    Dv = gl.zeros([CH], gl.float32, layout=gl.SliceLayout(1, LG))
    if HAS_D:
        Dv = gl.load(D_ptr + gd, mask=gd < DM, other=0.0).to(gl.float32)
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
        m2 = (gd < DM)[:, None] & (offs_g < L)[None, :]
        ug = gl.load(u_ptr + grow + offs_g[None, :], mask=m2, other=0.0)
        u = gl.convert_layout(ug, LT).to(gl.float32)
        dt = gl.convert_layout(gl.load(delta_ptr + grow + offs_g[None, :], mask=m2, other=0.0), LT).to(gl.float32)
        _, dt = _step_size(dt, bias[:, None], HAS_BIAS, SOFTPLUS)
        dt = gl.where((td < DM)[:, None] & (t0 + cols < L)[None, :], dt, 0.0)  # padding: decay 1, input 0
        dtu = dt * u
        if not FULL:
            total += gl.sum(dt, axis=1)
        if SAVE:
            if t0 % EVERY == 0:
                gl.store(states_ptr + ((pid_b * DM + offs_d[:, None]) * n_states + t0 // EVERY) * N + offs_n[None, :],
                         h, mask=mdn)
        ys = gl.zeros([CH, T], gl.float32, layout=LT)
        for t in gl.static_range(T):
            # B_t, C_t: n contiguous values, the same for every thread (past the end: the last step's, times dt = 0)
            bc = (pid_b * L + gl.minimum(t0 + t, L - 1)) * N + offs_n
            dA = gl.exp2(gl.convert_layout(_step_of(dt, cols, t), VH, assert_trivial=True)[:, None] * A2)
            if RESET > 0:  # where a group starts, the decay is 0 (padding past the end keeps the state)
                dA = gl.where(((t0 + t) % RESET == 0) & (t0 + t < L), 0.0, dA)
            x = gl.convert_layout(_step_of(dtu, cols, t), VH, assert_trivial=True)
            h = dA * h + x[:, None] * gl.load(B_ptr + bc).to(gl.float32)[None, :]
            if FULL:
                y = gl.sum(h * gl.load(C_ptr + bc).to(gl.float32)[None, :], axis=1)
                ys = gl.where(cols[None, :] == t, gl.convert_layout(y, VT, assert_trivial=True)[:, None], ys)
        if FULL:
            ys = gl.convert_layout(ys, LG)
            if HAS_D:
                ys += Dv[:, None] * ug.to(gl.float32)
            if HAS_Z:
                gl.store(ypre_ptr + grow + offs_g[None, :], ys, mask=m2)
                z = gl.load(z_ptr + grow + offs_g[None, :], mask=m2, other=0.0).to(gl.float32)
                ys = gl.fdiv(ys * z, 1.0 + gl.exp2(z * -1.4426950408889634))
            gl.store(out_ptr + grow + offs_g[None, :], ys.to(out_ptr.dtype.element_ty), mask=m2)
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
@triton.jit
def _bwd_inputs(u_ptr, delta_ptr, dout_ptr, z_ptr, ypre_ptr, dz_ptr, bias, row, offs_l, offs_g, mask_d, m2, L,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A (BLOCK_D, BLOCK_L) tile's inputs to the backward, as float32: u, delta before and after softplus,
    and the output gradient through the gate, dy, in time order; the next step's delta and dy reversed
    (loaded at offs_g, turned by _flip4). Stores the gate's gradient."""
    m2g = mask_d[:, None] & (offs_g[None, :] < L)
    m2gn = mask_d[:, None] & (offs_g[None, :] + 1 < L)
    u = tl.load(u_ptr + row + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
    draw, dt = _step_size(tl.load(delta_ptr + row + offs_l[None, :], mask=m2, other=0.0).to(tl.float32),
                          bias[:, None], HAS_BIAS, SOFTPLUS)
    dt = tl.where(m2, dt, 0.0)
    # reversed: the step size of the next step, whose decay carries the adjoint back to this one
    _, dt_n = _step_size(_flip4(tl.load(delta_ptr + row + offs_g[None, :] + 1, mask=m2gn, other=0.0).to(tl.float32)),
                         bias[:, None], HAS_BIAS, SOFTPLUS)
    g = tl.load(dout_ptr + row + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
    g_r = _flip4(tl.load(dout_ptr + row + offs_g[None, :], mask=m2g, other=0.0).to(tl.float32))
    if HAS_Z:
        z = tl.load(z_ptr + row + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        y = tl.load(ypre_ptr + row + offs_l[None, :], mask=m2, other=0.0)
        sz = tl.sigmoid(z)
        dy = g * z * sz
        tl.store(dz_ptr + row + offs_l[None, :], (g * y * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                 mask=m2)
        z_r = _flip4(tl.load(z_ptr + row + offs_g[None, :], mask=m2g, other=0.0).to(tl.float32))
        dy_r = g_r * z_r * tl.sigmoid(z_r)
    else:
        dy = g
        dy_r = g_r
    return u, draw, dt, dt_n, dy, dy_r


@triton.jit
def _store_dh0(dh0_ptr, delta_ptr, A, bias, dh_first, pid_b, offs_d, mask_d, dn, DM, L, N: tl.constexpr,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, RESET: tl.constexpr):
    """The initial state's adjoint, dA_0 dh_0, from the adjoint at step 0 (dh_first, (BLOCK_D, N))."""
    dt0 = _step_size(tl.load(delta_ptr + pid_b * DM * L + offs_d * L, mask=mask_d, other=0.0).to(tl.float32),
                     bias, HAS_BIAS, SOFTPLUS)[1]
    dh0 = tl.exp2(dt0[:, None] * A * 1.4426950408889634) * dh_first
    if RESET > 0:  # step 0 starts a group: the initial state is not used
        dh0 = dh0 * 0.0
    tl.store(dh0_ptr + pid_b * DM * N + dn, dh0, mask=mask_d[:, None])


@triton.jit
def _bwd_state(n, q, A_ptr, B_ptr, C_ptr, states_ptr, scratch_ptr, tile, state, pid_b, offs_d, mask_d, c, L,
               u, dt, dt_n, dtu, dy, dy_r, ddt, du, dA_acc,
               N: tl.constexpr, BLOCK_L: tl.constexpr, RESET: tl.constexpr, FLIP: tl.constexpr):
    """State index n of a (BLOCK_D, BLOCK_L) tile of chunk c: the adjoint dh_t = C_t dy_t + dA_{t+1} dh_{t+1},
    a forward scan over the reversed chunk entered by q (the adjoint at the next chunk's first step, the decay
    past the end being 1), back to time order by `tl.flip` in registers (FLIP) or else through this program's
    scratch tile (a store, a barrier and a load; scratch_ptr and tile are unused with FLIP); the states, a forward
    scan in time order from the chunk's start state (at `state` in states_ptr); their products added to the
    gradients of delta and u and to column n of the gradient of A. Per n, the rows of B and C are loaded
    straight into the tiles' layout, and A's column and the start state as vectors: picking a column out of a
    register tile (_column) made the compiler move the scans into a slower layout.
    Returns the reversed adjoint, ddt, du, dA_acc, and the tile's shares of dB_n and dC_n over its channels."""
    cols = tl.arange(0, BLOCK_L)
    rev = _reversed_runs(BLOCK_L)
    offs_l = c * BLOCK_L + cols
    offs_r = c * BLOCK_L + (BLOCK_L - 1) - cols
    offs_g = c * BLOCK_L + rev
    m2 = mask_d[:, None] & (offs_l[None, :] < L)
    m2g = mask_d[:, None] & (offs_g[None, :] < L)
    m2rn = mask_d[:, None] & (offs_r[None, :] + 1 < L)
    offs_n = tl.arange(0, N)
    a_n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
    a2_n = a_n * 1.4426950408889634
    Cn_r = _flip4(tl.load(C_ptr + (pid_b * N + n) * L + offs_g[None, :] + 0 * offs_d[:, None], mask=m2g,
                          other=0.0).to(tl.float32))
    dA_n = tl.where(m2rn, tl.exp2(dt_n * a2_n[:, None]), 1.0)
    if RESET > 0:  # where the next step starts a group, its decay is 0
        dA_n = tl.where((((offs_r + 1) % RESET == 0) & (offs_r + 1 < L))[None, :], 0.0, dA_n)
    cdy = Cn_r * dy_r
    cdy = tl.where(cols[None, :] == 0, cdy + dA_n * q[:, None], cdy)
    _, dh_r = tl.associative_scan((dA_n, cdy), 1, _compose)
    if not FLIP:
        tl.store(scratch_ptr + tile + rev[None, :], _flip4(dh_r))
    Bn = tl.load(B_ptr + (pid_b * N + n) * L + offs_l[None, :] + 0 * offs_d[:, None], mask=m2,
                 other=0.0).to(tl.float32)
    dA = tl.exp2(dt * a2_n[:, None])
    if RESET > 0:  # where a group starts, the decay is 0
        dA = tl.where(((offs_l % RESET == 0) & (offs_l < L))[None, :], 0.0, dA)
    x = dtu * Bn
    h_n = tl.load(states_ptr + state + n, mask=mask_d, other=0.0)
    _, hs = tl.associative_scan((dA, tl.where(cols[None, :] == 0, x + dA * h_n[:, None], x)), 1, _compose)
    if FLIP:
        dh = tl.where(m2, tl.flip(dh_r, 1), 0.0)
    else:
        tl.debug_barrier()  # the adjoint tile is written by other threads than read it
        dh = tl.where(m2, tl.load(scratch_ptr + tile + cols[None, :]), 0.0)
        tl.debug_barrier()  # and read before the next n overwrites it
    dAh = dh * (hs - x)  # dL/d(dA_t) dA_t, since dA_t h_{t-1} = h_t - x_t
    dhB = dh * Bn
    ddt += dhB * u + dAh * a_n[:, None]
    du += dhB * dt
    dA_acc = tl.where(offs_n[None, :] == n, dA_acc + tl.sum(dAh * dt, axis=1)[:, None], dA_acc)
    return dh_r, ddt, du, dA_acc, tl.sum(dh * dtu, axis=0), tl.sum(hs * dy, axis=0)


@triton.jit
def _selective_bwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, ypre_ptr,
                   dout_ptr, dhlast_ptr, scratch_ptr,
                   du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dh0_ptr,
                   L, DM, n_chunks, n_states,
                   N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, R: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_DHLAST: tl.constexpr, RESET: tl.constexpr, FLIP: tl.constexpr):
    """The chunks one after another, last first, the adjoint carried from chunk to chunk in registers."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    offs_n = tl.arange(0, N)
    cols = tl.arange(0, BLOCK_L)
    dn = offs_d[:, None] * N + offs_n[None, :]
    A, bias, Dv = _channels(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, dn, HAS_BIAS, HAS_D)
    if HAS_DHLAST:  # adjoint of the state after the last step, carried backwards chunk by chunk
        carry = tl.load(dhlast_ptr + pid_b * DM * N + dn, mask=mask_d[:, None], other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    row = pid_b * DM * L + offs_d[:, None] * L
    # this program's (BLOCK_D, BLOCK_L) tile of scratch: the adjoint, written in reversed time order, read in order
    tile = (pid_b * tl.num_programs(1) + tl.program_id(1)) * BLOCK_D * BLOCK_L + tl.arange(0, BLOCK_D)[:, None] * BLOCK_L
    rev = _reversed_runs(BLOCK_L)
    for ci in tl.range(0, n_chunks):
        c = n_chunks - 1 - ci
        # two views of the chunk: in time order (offs_l) and reversed (offs_g: _reversed_runs, turned by _flip4)
        offs_l = c * BLOCK_L + cols
        offs_g = c * BLOCK_L + rev
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        u, draw, dt, dt_n, dy, dy_r = _bwd_inputs(u_ptr, delta_ptr, dout_ptr, z_ptr, ypre_ptr, dz_ptr, bias, row,
                                                  offs_l, offs_g, mask_d, m2, L, HAS_Z, HAS_BIAS, SOFTPLUS)
        du = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
            du += Dv[:, None] * dy
        ddt = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        dtu = dt * u
        for n in tl.range(0, N):
            # the chunk's start state was stored by the forward every BLOCK_L / R steps
            dh_r, ddt, du, dA_acc, share_b, share_c = _bwd_state(
                n, _column(carry, offs_n, n), A_ptr, B_ptr, C_ptr, states_ptr, scratch_ptr, tile,
                ((pid_b * DM + offs_d) * n_states + c * R) * N, pid_b, offs_d, mask_d, c, L, u, dt, dt_n, dtu, dy,
                dy_r, ddt, du, dA_acc, N, BLOCK_L, RESET, FLIP)
            carry = tl.where(offs_n[None, :] == n, _column(dh_r, cols, BLOCK_L - 1)[:, None], carry)
            # this program's share of dB, dC: (b, d-block, n, l), summed over d-blocks afterwards
            part = ((pid_b * tl.num_programs(1) + tl.program_id(1)) * N + n) * L + offs_l
            tl.store(dB_ptr + part, share_b, mask=mask_l)
            tl.store(dC_ptr + part, share_c, mask=mask_l)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(draw)
        tl.store(du_ptr + row + offs_l[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + row + offs_l[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
    tl.store(dA_ptr + pid_b * DM * N + dn, dA_acc, mask=mask_d[:, None])
    # the carry left after the first chunk is the adjoint at step 0
    _store_dh0(dh0_ptr, delta_ptr, A, bias, carry, pid_b, offs_d, mask_d, dn, DM, L, N, HAS_BIAS, SOFTPLUS, RESET)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DM + offs_d, dD_acc, mask=mask_d)


@triton.jit
def _selective_bwd_carries(delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, x_ptr, m_ptr, L, DM, n_chunks,
                           N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, HAS_Z: tl.constexpr,
                           HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, RESET: tl.constexpr):
    """Each chunk's own share of the adjoint at its first step t0, and the decay that carries the adjoint at
    the next chunk's first step t1 back to t0, per (d, n):
        local = sum_s w_s C_s dy_s,  w_s = prod_{t0 < r <= s} dA_r = exp2(a_n sum_{t0 < r <= s} dt_r),
        M = prod_{t0 < r <= t1} dA_r,
    so the adjoints at the chunks' first steps follow Q_c = local_c + M_c Q_{c+1}, a linear recurrence over
    chunks. No scan per n: one cumulative sum of dt per chunk, then an exp2 and a reduction per n. Written at
    slot n_chunks - c of (b, d, n, n_chunks + 1), so that scanning the slots in order walks the chunks backwards."""
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
    row = pid_b * DM * L + offs_d * L
    _, dt = _step_size(tl.load(delta_ptr + row[:, None] + offs_l[None, :], mask=m2, other=0.0).to(tl.float32),
                       bias[:, None], HAS_BIAS, SOFTPLUS)
    dt = tl.where(m2, dt, 0.0)
    _, dt_first = _step_size(tl.load(delta_ptr + row + t0, mask=mask_d, other=0.0).to(tl.float32), bias,
                             HAS_BIAS, SOFTPLUS)
    _, dt_next = _step_size(tl.load(delta_ptr + row + t1, mask=mask_d & (t1 < L), other=0.0).to(tl.float32), bias,
                            HAS_BIAS, SOFTPLUS)
    dt_next = tl.where(t1 < L, dt_next, 0.0)  # past the end the decay is 1: dhlast enters the last step as it is
    span = tl.cumsum(dt, axis=1) - dt_first[:, None]  # sum over t0 < r <= s
    total = tl.sum(dt, axis=1) - dt_first + dt_next  # sum over t0 < r <= t1
    g = tl.load(dout_ptr + row[:, None] + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row[:, None] + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        g = g * z * tl.sigmoid(z)
    if RESET > 0:  # a group start in (t0, s] cuts the adjoint's path from s back to t0
        open_ = (offs_l // RESET) == (t0 // RESET)
        open_end = (tl.minimum(t1, L - 1) // RESET) == (t0 // RESET)
    slot = (pid_b * DM + offs_d) * N * (n_chunks + 1) + (n_chunks - c)
    for n in tl.static_range(N):
        a2_n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32) * 1.4426950408889634
        Cn = tl.load(C_ptr + (pid_b * N + n) * L + offs_l, mask=mask_l, other=0.0).to(tl.float32)
        w = tl.exp2(a2_n[:, None] * span)
        if RESET > 0:
            w = tl.where(open_[None, :], w, 0.0)
        m = tl.exp2(a2_n * total)
        if RESET > 0:
            m = tl.where(open_end, m, 0.0)
        tl.store(x_ptr + slot + n * (n_chunks + 1), tl.sum(w * (Cn[None, :] * g), axis=1), mask=mask_d)
        tl.store(m_ptr + slot + n * (n_chunks + 1), m, mask=mask_d)


@triton.jit
def _selective_bwd_chunk(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, ypre_ptr,
                         dout_ptr, carries_ptr,
                         du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dh0_ptr,
                         L, DM, n_chunks, n_states,
                         N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, R: tl.constexpr,
                         SUBTILES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, NEED_DH0: tl.constexpr, RESET: tl.constexpr):
    """Every chunk at once: a program owns one chunk of SUBTILES x BLOCK_D channels and walks its tiles one
    after another. The adjoint entering the chunk from the next (Q_{c+1}) comes from `carries` (slot
    n_chunks - 1 - c, from _selective_bwd_carries and a linear scan over chunks), its start state from
    `states`. Per-program shares of dA and dD, (b, chunk, d, n) and (b, chunk, d), are summed afterwards."""
    pid_b = tl.program_id(0)
    pid_g = tl.program_id(1)
    c = tl.program_id(2)
    offs_n = tl.arange(0, N)
    cols = tl.arange(0, BLOCK_L)
    offs_l = c * BLOCK_L + cols
    offs_g = c * BLOCK_L + _reversed_runs(BLOCK_L)
    mask_l = offs_l < L
    for s in tl.range(0, SUBTILES):
        offs_d = (pid_g * SUBTILES + s) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DM
        dn = offs_d[:, None] * N + offs_n[None, :]
        A, bias, Dv = _channels(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, dn, HAS_BIAS, HAS_D)
        m2 = mask_d[:, None] & mask_l[None, :]
        row = pid_b * DM * L + offs_d[:, None] * L
        u, draw, dt, dt_n, dy, dy_r = _bwd_inputs(u_ptr, delta_ptr, dout_ptr, z_ptr, ypre_ptr, dz_ptr, bias, row,
                                                  offs_l, offs_g, mask_d, m2, L, HAS_Z, HAS_BIAS, SOFTPLUS)
        du = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        if HAS_D:
            tl.store(dD_ptr + (pid_b * n_chunks + c) * DM + offs_d, tl.sum(dy * u, axis=1), mask=mask_d)
            du += Dv[:, None] * dy
        ddt = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        dtu = dt * u
        dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        if NEED_DH0:
            dh_first = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        for n in tl.range(0, N):
            q = tl.load(carries_ptr + ((pid_b * DM + offs_d) * N + n) * (n_chunks + 1) + (n_chunks - 1 - c),
                        mask=mask_d, other=0.0)
            dh_r, ddt, du, dA_acc, share_b, share_c = _bwd_state(
                n, q, A_ptr, B_ptr, C_ptr, states_ptr, None, None,
                ((pid_b * DM + offs_d) * n_states + c * R) * N, pid_b, offs_d, mask_d, c, L, u, dt, dt_n, dtu, dy,
                dy_r, ddt, du, dA_acc, N, BLOCK_L, RESET, True)
            if NEED_DH0:
                dh_first = tl.where(offs_n[None, :] == n, _column(dh_r, cols, BLOCK_L - 1)[:, None], dh_first)
            # this program's share of dB, dC: (b, group, n, l), its tiles added here and the groups afterwards
            part = ((pid_b * tl.num_programs(1) + pid_g) * N + n) * L + offs_l
            share_b += tl.load(dB_ptr + part, mask=mask_l & (s > 0), other=0.0)
            share_c += tl.load(dC_ptr + part, mask=mask_l & (s > 0), other=0.0)
            tl.store(dB_ptr + part, share_b, mask=mask_l)
            tl.store(dC_ptr + part, share_c, mask=mask_l)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(draw)
        tl.store(du_ptr + row + offs_l[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + row + offs_l[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        tl.store(dA_ptr + (pid_b * n_chunks + c) * DM * N + dn, dA_acc, mask=mask_d[:, None])
        if NEED_DH0:
            if c == 0:
                _store_dh0(dh0_ptr, delta_ptr, A, bias, dh_first, pid_b, offs_d, mask_d, dn, DM, L, N, HAS_BIAS,
                           SOFTPLUS, RESET)
        tl.debug_barrier()  # the next tile reads this one's dB, dC shares


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
                COMPLEX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """h_t = a_t h_{t-1} + x_t; complex tensors are (..., 2) float pairs, element stride 2."""
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    cols = tl.arange(0, BLOCK_L)
    S: tl.constexpr = 2 if COMPLEX else 1
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
    Each chunk is read and written in reversed time order (runs of 4 turned by _flip4, as in the selective
    backward), so the adjoint is a forward scan."""
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


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, reset_every):
        u, delta, B, C, z = (_opt(t) for t in (u, delta, B, C, z))
        A = A.contiguous().float()
        D, delta_bias = _opt(D), _opt(delta_bias)
        h0 = None if h0 is None else h0.contiguous().float()
        b, d, l = u.shape
        n = A.shape[1]
        cfg = CONFIG["fwd"]
        blocks = triton.cdiv(d, 32 * cfg["num_warps"])
        # segments of a multiple of EVERY steps, enough of them for about PROGRAMS programs
        n_seg = max(1, min(triton.cdiv(l, EVERY), cfg["PROGRAMS"] // (b * blocks)))
        seg_len = triton.cdiv(triton.cdiv(l, n_seg), EVERY) * EVERY
        n_seg = triton.cdiv(l, seg_len)
        save = any(ctx.needs_input_grad[:9])
        out = torch.empty_like(u)
        f32 = dict(device=u.device, dtype=torch.float32)
        hlast = torch.empty(b, d, n, **f32)
        states = torch.empty(b, d, triton.cdiv(l, EVERY), n, **f32) if save else hlast
        ypre = torch.empty(b, d, l, **f32) if (save and z is not None) else out
        # B, C as (b, l, n) float32: a step's n values together, read by every thread alike
        Bt, Ct = (torch.empty(b, l, n, **f32).copy_(t.transpose(1, 2)) for t in (B, C))
        opt = lambda t: u if t is None else t  # noqa: E731
        flags = dict(N=n, T=cfg["T"], EVERY=EVERY, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, HAS_H0=h0 is not None, RESET=reset_every,
                     num_warps=cfg["num_warps"])
        args = (u, delta, A, Bt, Ct, opt(D), opt(z), opt(delta_bias), opt(h0))
        carry = hlast
        if n_seg > 1:
            # each segment's end state from zero and its decay, then a linear scan over the segments gives
            # every segment's start state (slot s - 1 for segment s)
            hend, decay = torch.empty(b, d, n, n_seg, **f32), torch.empty(b, d, n, n_seg, **f32)
            _selective_fwd[(b, blocks, n_seg)](*args, hlast, out, ypre, hlast, states, hend, decay, l, d, seg_len,
                                               n_seg, states.shape[2], FULL=False, SAVE=False, **flags)
            carry = _linear_scan(decay.view(b, d * n, n_seg), hend.view(b, d * n, n_seg),
                                 torch.zeros(b, d * n, **f32) if h0 is None else h0.view(b, d * n))
        _selective_fwd[(b, blocks, n_seg)](*args, carry, out, ypre, hlast, states, hlast, hlast, l, d, seg_len,
                                           n_seg, states.shape[2], FULL=True, SAVE=bool(save), **flags)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, ypre if z is not None else None)
            ctx.softplus, ctx.has_h0, ctx.reset_every = softplus, h0 is not None, reset_every
        return out, hlast

    @staticmethod
    def backward(ctx, dout, dhlast):
        u, delta, A, B, C, D, z, delta_bias, states, ypre = ctx.saved_tensors
        b, d, l = u.shape
        n = A.shape[1]
        dout = dout.contiguous()
        f32 = dict(device=u.device, dtype=torch.float32)
        parallel = triton.cdiv(l, CONFIG["bwd_chunks"]["BLOCK_L"]) >= CHUNK_PARALLEL_FROM and b * d <= CHUNK_PARALLEL_BD
        kind = "bwd_chunks" if parallel else "bwd"
        cfg = CONFIG[kind]
        bd, bl = _tiles(kind, l, d)
        n_chunks = triton.cdiv(l, bl)
        sub = cfg.get("SUBTILES", 1)
        n_groups = triton.cdiv(d, bd * sub)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = torch.empty(b, n_chunks if parallel else 1, d, n, **f32)
        dB = torch.empty(b, n_groups, n, l, **f32)
        dC = torch.empty_like(dB)
        dD = torch.empty(b, n_chunks if parallel else 1, d, **f32) if D is not None else None
        dh0 = torch.empty(b, d, n, **f32)
        opt = lambda t, dummy=u: dummy if t is None else t  # noqa: E731
        common = dict(N=n, BLOCK_D=bd, BLOCK_L=bl, R=max(1, bl // EVERY), HAS_D=D is not None,
                      HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus,
                      RESET=ctx.reset_every, num_warps=cfg["num_warps"], maxnreg=cfg.get("maxnreg"))
        if parallel:
            # the adjoint entering each chunk from the next, Q_{c+1}: each chunk's own share and decay, then
            # a linear scan over the chunks, last first; slot 0 holds dhlast
            x, m = torch.empty(b, d, n, n_chunks + 1, **f32), torch.empty(b, d, n, n_chunks + 1, **f32)
            x[..., 0] = 0.0 if dhlast is None else dhlast
            m[..., 0] = 0.0
            _selective_bwd_carries[(b, triton.cdiv(d, bd), n_chunks)](
                delta, A, C, opt(z), opt(delta_bias), dout, x, m, l, d, n_chunks, N=n, BLOCK_D=bd, BLOCK_L=bl,
                HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.softplus, RESET=ctx.reset_every,
                num_warps=cfg["num_warps"])
            carries = _linear_scan(m.view(b, d * n, n_chunks + 1), x.view(b, d * n, n_chunks + 1),
                                   torch.zeros(b, d * n, **f32))
            _selective_bwd_chunk[(b, n_groups, n_chunks)](
                u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), states, opt(ypre), dout, carries,
                du, ddelta, dA, dB, dC, opt(dD, dA), opt(dz), dh0, l, d, n_chunks, states.shape[2],
                SUBTILES=sub, NEED_DH0=ctx.has_h0, **common)
        else:
            flip = n_chunks >= FLIP_FROM
            _selective_bwd[(b, n_groups)](
                u, delta, A, B, C, opt(D), opt(z), opt(delta_bias), states, opt(ypre),
                dout, dh0 if dhlast is None else dhlast.contiguous().float(),
                u if flip else torch.empty(b * n_groups * bd * bl, **f32),
                du, ddelta, dA, dB, dC, opt(dD, dA), opt(dz), dh0, l, d, n_chunks, states.shape[2],
                HAS_DHLAST=dhlast is not None, FLIP=flip, **common)
        dB, dC = dB.sum(1), dC.sum(1)
        dbias = ddelta.float().sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (du, ddelta, dA.sum((0, 1)), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum((0, 1)).to(D.dtype) if D is not None else None, dz, dbias,
                dh0 if ctx.has_h0 else None, None, None)


def selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, reset_every=0):
    if CONFIG["bwd"]["BLOCK_L"] % EVERY or CONFIG["bwd_chunks"]["BLOCK_L"] % EVERY or EVERY % CONFIG["fwd"]["T"]:
        raise RuntimeError("CONFIG: the backward BLOCK_L must be a multiple of EVERY, and EVERY of the forward's T")
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, bool(delta_softplus), int(reset_every))


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
    """The forward of the linear scan, outside autograd: contiguous inputs, h of x's shape."""
    b, d, l = x.shape
    h = torch.empty_like(x)
    cfg = CONFIG["lin"]
    _linear_fwd[(b, triton.cdiv(d, cfg["BLOCK_D"]))](_as_real(a), _as_real(x), _as_real(h0), _as_real(h), l, d,
                                                     triton.cdiv(l, cfg["BLOCK_L"]), COMPLEX=x.is_complex(),
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
