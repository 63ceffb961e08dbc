"""Selective-scan speed and memory on one GPU, against mamba-ssm's CUDA kernel, mambapy's pscan and
accelerated-scan in the same run.

    python experiments/bench_scan.py --device cuda [--sweep] [--out docs/results/bench_scan.json]
    python experiments/bench_scan.py --device cpu            # the chunked PyTorch path against the loop
    python experiments/bench_scan.py --device cpu --shape 1,16,16 --lengths 4096   # steps too small for a loop

On the CPU, "peak MB" is what autograd keeps for the backward pass (saved tensors), measured with
saved-tensor hooks: the loop keeps every step's state, the chunked path only chunk-start states.

Problem: Mamba's S6 scan with softplus(delta + bias), skip D and gate z, B=8, D=256, N=16,
L in {1024, 4096, 16384}, float32 and bfloat16 inputs; "fwd" is the forward, "fwd+bwd" the forward
then the backward of a random cotangent.

Paths:
- seqrl: `seqrl.kernels.scan.selective_scan` (Triton on CUDA);
- seqrl-bld: the same with u, delta (and the cotangent) as transposes of (B, L, D) tensors and z as half of a
  (B, L, 2D) one, as a Mamba layer's projections give them: the kernels read and write that memory in place;
- mamba-ssm: mamba-ssm 2.3.2.post1's `selective_scan_fn` (its CUDA kernel; built by experiments/build_mamba_ssm.sh),
  the same inputs, gate, delta bias and softplus;
- torch-chunked: seqrl's chunked PyTorch path, run on the same device (what the CPU uses);
- mambapy: mambapy 1.2.0's `pscan` (Blelloch in PyTorch) over the materialised (B, L, D, N) decays
  and inputs, then the contraction with C, as mambapy's own selective_scan does;
- accelerated-scan: accelerated-scan 0.3.1's Triton `scalar.scan` over the materialised
  (B, D*N, L) recurrence, then the contraction with C. Under Triton 3.6 (torch 2.11) its backward makes an
  illegal memory access (H100, 2026-12-05), which leaves the process's CUDA context unusable, so every later
  case fails too: time it in a run of its own (`--paths seqrl,accelerated-scan`) or leave it out;
- loop: the reference loop (L=1024 only).

Timing: "ms" calls the path eagerly (every launch from Python, what a user without CUDA graphs pays);
"graph ms" replays the same call captured in a CUDA graph (CUDA only). On CUDA, "kernels" counts the GPU
kernels one call launches (torch.profiler; memsets and copies included) and "host ms" is how long the Python call
takes to return while the GPU never makes it wait (a synchronize every 8 calls; median of 25 groups): where host
ms is above graph ms, the eager time is the host's. The backward is
`torch.autograd.grad` of every input against a random cotangent. "vs mamba-ssm" gives mamba-ssm's time over
seqrl's for each cell (> 1: seqrl faster) and both peaks.

Bandwidth floor: the bytes a fused scan must move (each input read once, each output written once;
fwd: u, delta, z, B, C in and out; bwd: those and the cotangent in, du, ddelta, dz, dB, dC out) over the
device-to-device copy bandwidth measured at the start of the run. "floor %" is floor time / measured time.
Peak memory is the most the path allocates beyond its inputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqrl.kernels import scan as S

B_, D_, N_ = 8, 256, 16


def steps_major(t):
    """(B, D, L) -> the same values as (B, L, D) memory."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def inputs(L, dtype, device, grad, seed=0, bld=False):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    x = dict(u=r(B_, D_, L), delta=r(B_, D_, L) * 0.5 - 2.0, A=-torch.exp(r(D_, N_) * 0.5), B=r(B_, N_, L),
             C=r(B_, N_, L), D=r(D_), z=r(B_, D_, L), delta_bias=r(D_) * 0.1)
    for k in ("u", "delta", "B", "C", "z"):
        x[k] = x[k].to(dtype)
    if bld:  # as a Mamba layer's projections give them (seqrl-bld)
        x["u"], x["delta"] = steps_major(x["u"]), steps_major(x["delta"])
        x["z"] = steps_major(torch.cat([torch.zeros_like(x["z"]), x["z"]], 1))[:, D_:]
    if grad:
        for v in x.values():
            v.requires_grad_()
    return x


def seqrl_scan(x):
    return S.selective_scan(**x, delta_softplus=True)


def chunked_scan(x):
    dt = F.softplus(x["delta"].float() + x["delta_bias"][:, None])
    h0 = torch.zeros(B_, D_, N_, device=dt.device)
    y, _ = S._SelectiveScanChunked.apply(x["u"].float(), dt, x["A"], x["B"].float(), x["C"].float(), h0, S.CHUNK, 0)
    return ((y + x["D"][:, None] * x["u"]) * F.silu(x["z"].float())).to(x["u"].dtype)


def materialised(x):
    """Decays and inputs as (B, L, D, N) tensors, the way scan libraries without a fused S6 kernel need them."""
    dt = F.softplus(x["delta"] + x["delta_bias"][:, None]).transpose(1, 2)  # (B, L, D)
    dA = torch.exp(dt[..., None] * x["A"])  # (B, L, D, N)
    bx = (dt * x["u"].transpose(1, 2))[..., None] * x["B"].transpose(1, 2)[:, :, None]  # (B, L, D, N)
    return dA, bx


def finish(hs, x):
    """hs (B, L, D, N) -> gated output (B, D, L)."""
    y = (hs * x["C"].transpose(1, 2)[:, :, None]).sum(-1).transpose(1, 2)
    return (y + x["D"][:, None] * x["u"]) * F.silu(x["z"])


def mambapy_scan(x):
    from mambapy.pscan import pscan

    dA, bx = materialised(x)
    return finish(pscan(dA, bx), x)


def mamba_ssm_scan(x):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                             delta_softplus=True)


def accel_scan(x):
    from accelerated_scan.scalar import scan

    dA, bx = materialised(x)
    L = dA.shape[1]
    to_bcl = lambda t: t.permute(0, 2, 3, 1).reshape(B_, D_ * N_, L).contiguous()  # noqa: E731
    hs = scan(to_bcl(dA), to_bcl(bx))  # (B, D*N, L)
    return finish(hs.view(B_, D_, N_, L).permute(0, 3, 1, 2), x)


def loop_scan(x):
    return S.selective_scan_ref(**x, delta_softplus=True)[0]


PATHS = {"seqrl": seqrl_scan, "seqrl-bld": seqrl_scan, "mamba-ssm": mamba_ssm_scan, "torch-chunked": chunked_scan,
         "mambapy": mambapy_scan, "accelerated-scan": accel_scan, "loop": loop_scan}


def bench(fn, device, warmup=3, reps=10):
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


def graphed(call):
    """The call captured in a CUDA graph (after warm-up on a side stream): its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay


def saved_mb(fn):
    """CPU: megabytes autograd keeps for the backward pass (each storage counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def kernels_per_call(call, reps=5):
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events()) / reps


def host_ms(call, groups=25, per=8):
    times = []
    for _ in range(groups):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(per):
            call()
        times.append((time.perf_counter() - t) / per * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[groups // 2]


def peak_mb(fn, device):
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth():
    x = torch.empty(2**28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    import triton.testing

    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * x.numel() * 4 / (ms * 1e-3)


def floor_bytes(L, esize, mode):
    bdl, bnl = B_ * D_ * L, B_ * N_ * L
    fwd = (4 * bdl + 2 * bnl) * esize
    bwd = (4 * bdl + 2 * bnl) * esize + (3 * bdl + 2 * bnl) * esize
    return fwd if mode == "fwd" else fwd + bwd


def run_case(name, L, dtype, mode, device, ref=None, graph=False):
    fn = PATHS[name]
    x = inputs(L, dtype, device, grad=mode != "fwd", bld=name == "seqrl-bld")
    g = torch.randn(B_, D_, L, device=device, dtype=dtype)
    if name == "seqrl-bld":
        g = steps_major(g)
    if mode == "fwd":
        call = lambda: fn(x)  # noqa: E731
        ctx = torch.no_grad
    else:
        call = lambda: torch.autograd.grad(fn(x), list(x.values()), g)  # noqa: E731
        ctx = torch.enable_grad
    with ctx():
        out = fn(x).detach()
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item() if ref is not None else float("nan")
        ms = bench(call, device)
        mem = peak_mb(call, device) if device == "cuda" else (saved_mb(lambda: fn(x)) if mode != "fwd" else float("nan"))
        graph_ms = bench(graphed(call), device) if graph else float("nan")
        host = dict(kernels=kernels_per_call(call), host_ms=host_ms(call)) if device == "cuda" else {}
    return dict(path=name, L=L, dtype=str(dtype).replace("torch.", ""), mode=mode, ms=ms, graph_ms=graph_ms,
                peak_mb=mem, rel_err_vs_seqrl=err, **host), out


def against_mamba_ssm(rows):
    """Per (dtype, L, mode) where both ran: mamba-ssm's time over seqrl's, eager and graph, and both peaks."""
    by = {(r["dtype"], r["L"], r["mode"], r["path"]): r for r in rows if "ms" in r}
    out = []
    for (dtype, L, mode, path), r in by.items():
        m = by.get((dtype, L, mode, "mamba-ssm"))
        if path == "seqrl" and m:
            out.append(dict(dtype=dtype, L=L, mode=mode, eager=m["ms"] / r["ms"], graph=m["graph_ms"] / r["graph_ms"],
                            peak_mb_seqrl=r["peak_mb"], peak_mb_mamba_ssm=m["peak_mb"]))
    return out


def one(rows, mode, tile, device):
    try:
        r, _ = run_case("seqrl", 16384, torch.float32, mode, device)
        rows.append(dict(tile, mode=mode, ms=r["ms"]))
    except Exception as e:  # noqa: BLE001 - a tile that does not compile is a result too
        rows.append(dict(tile, mode=mode, error=repr(e)[:200]))
    print(rows[-1], flush=True)


def sweep(device):
    """Tile sizes of the Triton kernels at L=16384, float32: forwards alone (T steps per tile, warps per
    program, programs aimed at), then the backward's segments with the fastest forward. Leaves the fastest
    forward+backward pair in CONFIG for the rest of the run."""
    from seqrl.kernels import triton_scan as T

    rows = []
    # the forward with a channel per thread (2026-11-24); the sweeps of the forward it replaced, (BLOCK_D,
    # BLOCK_L, num_warps) tiles, are in docs/results/bench_scan_sweep.txt
    for t, nw, programs in [(16, 1, 4096), (16, 1, 2048), (16, 1, 8192), (8, 1, 4096), (32, 1, 4096), (16, 2, 4096)]:
        T.CONFIG["fwd"] = dict(T=t, num_warps=nw, PROGRAMS=programs)
        one(rows, "fwd", T.CONFIG["fwd"], device)
    best_fwd = min((r for r in rows if "ms" in r), key=lambda r: r["ms"])
    T.CONFIG["fwd"] = {k: best_fwd[k] for k in ("T", "num_warps", "PROGRAMS")}
    best = None
    # the backward (a channel per thread, 2026-11-24): programs aimed at and the unit of its segments
    for programs, seg in [(8192, 64), (4096, 128), (4096, 32), (8192, 32), (16384, 64)]:
        T.CONFIG["bwd"] = dict(T.CONFIG["bwd"], PROGRAMS=programs, SEG=seg)
        one(rows, "fwd+bwd", T.CONFIG["bwd"], device)
        if "ms" in rows[-1] and (best is None or rows[-1]["ms"] < best[0]):
            best = (rows[-1]["ms"], dict(T.CONFIG["bwd"]))
    T.CONFIG["bwd"] = best[1]
    print("chosen:", T.CONFIG, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sweep", action="store_true", help="also time tile sizes of the Triton kernels")
    ap.add_argument("--lengths", default=None, help="comma-separated L (default 1024,4096,16384; CPU 256,1024)")
    ap.add_argument("--shape", default=None, help="B,D,N (default 8,256,16)")
    ap.add_argument("--paths", default=None, help="comma-separated subset of " + ",".join(PATHS))
    ap.add_argument("--dtypes", default=None, help="comma-separated subset of float32,bfloat16 (CUDA)")
    ap.add_argument("--no-graph", action="store_true", help="CUDA: eager timings only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = args.device
    if args.shape:
        global B_, D_, N_
        B_, D_, N_ = (int(v) for v in args.shape.split(","))
    result = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "B": B_, "D": D_, "N": N_}
    if dev == "cuda":
        result["copy_GBps"] = copy_bandwidth() / 1e9
        print(f"device-to-device copy: {result['copy_GBps']:.0f} GB/s", flush=True)
        if args.sweep:
            result["sweep"] = sweep(dev)
        from seqrl.kernels.triton_scan import CONFIG

        result["config"] = CONFIG
        lengths = [1024, 4096, 16384]
        dtypes = [torch.float32, torch.bfloat16]
        names = ["seqrl", "seqrl-bld", "mamba-ssm", "torch-chunked", "mambapy", "accelerated-scan", "loop"]
    else:
        torch.set_num_threads(1)
        lengths = [256, 1024]
        dtypes = [torch.float32]
        names = ["seqrl", "loop"]
    if args.paths:
        names = args.paths.split(",")
    if args.lengths:
        lengths = [int(v) for v in args.lengths.split(",")]
    if args.dtypes:
        dtypes = [getattr(torch, v) for v in args.dtypes.split(",")]
    rows = []
    for dtype in dtypes:
        for L in lengths:
            for mode in ("fwd", "fwd+bwd"):
                ref = None
                for name in names:
                    if name in ("loop", "torch-chunked") and L > 1024 and dev == "cuda":
                        continue  # step-by-step paths: seconds per call at these lengths
                    try:
                        r, out = run_case(name, L, dtype, mode, dev, ref, graph=dev == "cuda" and not args.no_graph)
                    except Exception as e:  # noqa: BLE001 - out of memory or unsupported dtype is a result
                        r, out = dict(path=name, L=L, dtype=str(dtype).replace("torch.", ""), mode=mode,
                                      error=repr(e)[:200]), None
                        torch.cuda.empty_cache() if dev == "cuda" else None
                    if name == "seqrl":
                        ref = out
                    if dev == "cuda" and "ms" in r:
                        esize = 4 if dtype == torch.float32 else 2
                        r["floor_pct"] = 100 * floor_bytes(L, esize, mode) / result["copy_GBps"] / 1e9 / (r["ms"] * 1e-3)
                    rows.append(r)
                    print(r, flush=True)
    result["rows"] = rows
    result["vs_mamba_ssm"] = against_mamba_ssm(rows)
    print(f"\n{'dtype':8} {'L':>6} {'mode':8} {'path':17} {'ms':>9} {'graph ms':>9} {'peak MB':>9} {'floor %':>8} "
          f"{'err':>8} {'kernels':>8} {'host ms':>8}")
    nan = float("nan")
    for r in rows:
        if "ms" in r:
            print(f"{r['dtype']:8} {r['L']:>6} {r['mode']:8} {r['path']:17} {r['ms']:9.3f} {r['graph_ms']:9.3f} "
                  f"{r['peak_mb']:9.0f} {r.get('floor_pct', nan):8.1f} {r['rel_err_vs_seqrl']:8.1e} "
                  f"{r.get('kernels', nan):8.1f} {r.get('host_ms', nan):8.3f}")
        else:
            print(f"{r['dtype']:8} {r['L']:>6} {r['mode']:8} {r['path']:17} {r['error'][:60]}")
    if result["vs_mamba_ssm"]:
        print(f"\nvs mamba-ssm (its time / seqrl's; > 1: seqrl faster)\n{'dtype':8} {'L':>6} {'mode':8} {'eager':>7} "
              f"{'graph':>7} {'peak MB seqrl / mamba-ssm':>26}")
        for c in result["vs_mamba_ssm"]:
            print(f"{c['dtype']:8} {c['L']:>6} {c['mode']:8} {c['eager']:6.2f}x {c['graph']:6.2f}x "
                  f"{c['peak_mb_seqrl']:>14.0f} / {c['peak_mb_mamba_ssm']:.0f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
