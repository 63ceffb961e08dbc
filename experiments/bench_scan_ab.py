"""Selective-scan A/B timing: the forward and forward+backward of whichever `seqrl` is first on PYTHONPATH,
so two versions can be timed in one lease, alternating. One JSON line per (dtype, L): medians from
`triton.testing.do_bench` (ms) and the memory one forward+backward allocates (peak_MB, gradients included).

    git archive REV seqrl agents envs | tar x -C /tmp/base          # the baseline's package
    PYTHONPATH=/tmp/base python experiments/bench_scan_ab.py main --lengths 1024,4096,16384
    PYTHONPATH=. python experiments/bench_scan_ab.py new --lengths 1024,4096,16384
    PYTHONPATH=. python experiments/bench_scan_ab.py new --shape 256,256,16 --lengths 60 --reset 3   # DM's shape

Tiles can be overridden (--fwd T,NW,PROGRAMS, T at every size; --bwd PROGRAMS,SEG; --every) for sweeps;
--kernel-info prints each compiled kernel's registers and shared memory. Problem: softplus(delta + bias), skip D,
gate z, as in bench_scan.py, but A = -(1..N) per channel and delta ~ N(-1, 0.5) (bench_scan.py:
A = -exp(N(0, 0.5)), delta ~ N(-2, 0.5)), the problem every recorded A/B number was taken on. At small sizes
(L=1024, DM's shape) the host's launches and autograd dominate what do_bench measures: --kernel-times adds the
GPU time of the kernels alone (torch.profiler, 20 calls), the selective-scan kernels and all kernels of a
forward+backward (the sums of partial gradients included)."""

import argparse
import json

import torch
import triton

from seqrl.kernels import triton_scan as T
from seqrl.kernels.scan import selective_scan


def tile(text, names):
    return dict(zip(names, (int(v) for v in text.split(","))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tag")
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shape", default="8,256,16", help="B,D,N")
    ap.add_argument("--reset", type=int, default=0, help="reset_every")
    ap.add_argument("--fwd", help="T,num_warps,PROGRAMS")
    ap.add_argument("--bwd", help="PROGRAMS,SEG")
    ap.add_argument("--every", type=int, help="store the state every EVERY steps (the backward's tile)")
    ap.add_argument("--kernel-info", action="store_true",
                    help="also each compiled selective-scan kernel's registers, spills and shared memory")
    ap.add_argument("--kernel-times", action="store_true", help="also the kernels' GPU time (torch.profiler)")
    ap.add_argument("--host-profile", action="store_true",
                    help="also where the host's time of an eager forward+backward goes (cProfile, top functions)")
    a = ap.parse_args()
    if a.fwd:
        fwd = tile(a.fwd, ("T", "num_warps", "PROGRAMS"))
        T.CONFIG["fwd"] = dict(T.CONFIG["fwd"], **fwd, T_FEW=fwd["T"])  # one tile at every size
    if a.bwd:
        T.CONFIG["bwd"] = dict(T.CONFIG["bwd"], **tile(a.bwd, ("PROGRAMS", "SEG")))
    if a.every:
        T.EVERY = a.every
    b, d, n = (int(v) for v in a.shape.split(","))
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        for length in (int(v) for v in a.lengths.split(",")):
            g = torch.Generator(device="cuda").manual_seed(0)
            r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
            u, delta, z = r(b, d, length).to(dtype), (r(b, d, length) * 0.5 - 1).to(dtype), r(b, d, length).to(dtype)
            Bm, Cm = r(b, n, length).to(dtype), r(b, n, length).to(dtype)
            A = -torch.arange(1, n + 1, device="cuda").float().repeat(d, 1)
            Dv, bias = r(d), r(d) * 0.1
            leaves = [t.requires_grad_() for t in (u, delta, Bm, Cm, z, A, Dv, bias)]
            gy = r(b, d, length).to(dtype)

            def fwd():
                return selective_scan(u, delta, A, Bm, Cm, D=Dv, z=z, delta_bias=bias, delta_softplus=True,
                                      reset_every=a.reset)

            def fwd_bwd():
                torch.autograd.grad(fwd(), leaves, gy)

            with torch.no_grad():
                t_fwd = triton.testing.do_bench(fwd, rep=200)
            fwd_bwd()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            t_fb = triton.testing.do_bench(fwd_bwd, rep=300)
            row = dict(tag=a.tag, dtype=name, L=length, fwd_ms=round(t_fwd, 4), fwdbwd_ms=round(t_fb, 4),
                       shape=a.shape, reset=a.reset, peak_MB=round(peak), cfg=T.CONFIG, every=T.EVERY)
            if a.kernel_times:
                row["kernel_us"] = kernel_times(fwd_bwd)
            print(json.dumps(row), flush=True)
            if a.host_profile:
                host_profile(fwd_bwd)
    if a.kernel_info:
        kernel_info()


def kernel_info():
    """Registers, spills and shared memory of every selective-scan kernel compiled in this process (one line
    each; the variants differ by dtype, layout and pass)."""
    for fn in (T._selective_fwd, T._selective_bwd, T._selective_bwd_carries):
        for caches in fn.device_caches.values():
            for kernel in caches[0].values():
                print(json.dumps(dict(kernel=fn.__name__, regs=getattr(kernel, "n_regs", None),
                                      spills=getattr(kernel, "n_spills", None),
                                      shared=getattr(kernel.metadata, "shared", None))), flush=True)


def kernel_times(fn, calls: int = 20) -> dict:
    """Mean GPU microseconds per call of fn: each selective-scan kernel, and all kernels together."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    out = {e.key: round(e.self_device_time_total / calls, 1) for e in events if e.key.startswith("_selective")}
    out["all"] = round(sum(e.self_device_time_total for e in events) / calls, 1)
    return out


def host_profile(fn, calls: int = 200, top: int = 25):
    """The functions where `calls` eager calls of fn spend the host's time (cProfile, by own time), printed with
    microseconds per call of fn."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    total = sum(v[2] for v in stats.stats.values())
    print(f"host time per call: {total / calls * 1e6:.0f} us (cProfile's own overhead included); top functions:")
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        print(f"  {tottime / calls * 1e6:8.1f} us own {cumtime / calls * 1e6:8.1f} us cum {ncalls / calls:5.1f}x  "
              f"{name} ({file.split('/')[-1]}:{line})")


if __name__ == "__main__":
    main()
