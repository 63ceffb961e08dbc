"""What an eager selective scan costs the host, against mamba-ssm's CUDA kernel in the same run.

    python experiments/bench_scan_host.py [--lengths 1024] [--profile] [--out FILE.json]
    PYTHONPATH=/tmp/mamba:$PYTHONPATH python experiments/bench_scan_host.py   # with the peer (build_mamba_ssm.sh)

At short lengths an eager scan is bound by the host: the GPU waits while Python launches the next kernel. For
each path, dtype and length (bench_scan.py's problem: B=8, D=256, N=16, gate, delta bias, softplus), "fwd" is the
forward under no_grad, "fwd+bwd" the forward then `torch.autograd.grad` of every input, and the columns are
- kernels: GPU kernels (torch's and Triton's, memsets included) one call launches, from torch.profiler;
- host us: the time the Python call takes to return, with the GPU kept idle enough that it never makes the host
  wait (a synchronize every 8 calls), median of 25 groups;
- eager us: wall time per call when calls run back to back (synchronised at the end): max(host, GPU) in effect;
- graph us: the same call replayed as a CUDA graph, the GPU's time alone.
`--profile` prints cProfile's top functions for 200 of seqrl's fwd+bwd calls (float32, the first length).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_scan import B_, D_, PATHS, graphed, inputs


def call_of(name, L, dtype, mode):
    fn = PATHS[name]
    x = inputs(L, dtype, "cuda", grad=mode != "fwd")
    g = torch.randn(B_, D_, L, device="cuda", dtype=dtype)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(x)
    else:
        def call():
            return torch.autograd.grad(fn(x), list(x.values()), g)
    return call


def kernels_per_call(call, reps=5):
    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            call()
        torch.cuda.synchronize()
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return n / reps


def host_us(call, groups=25, per=8):
    times = []
    for _ in range(groups):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(per):
            call()
        times.append((time.perf_counter() - t) / per * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def eager_us(call, reps=200):
    for _ in range(10):
        call()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def graph_us(call, reps=200):
    replay = graphed(call)
    for _ in range(10):
        replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--paths", default="seqrl,mamba-ssm")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    lengths = [int(v) for v in args.lengths.split(",")]
    paths = args.paths.split(",")
    if "mamba-ssm" in paths:
        try:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401
        except ImportError as e:
            print(f"mamba-ssm not importable ({e}): left out")
            paths.remove("mamba-ssm")
    rows = []
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}")
    print(f"{'path':10} {'dtype':9} {'L':>6} {'mode':8} {'kernels':>8} {'host us':>8} {'eager us':>9} {'graph us':>9}")
    for dtype in args.dtypes.split(","):
        for L in lengths:
            for mode in ("fwd", "fwd+bwd"):
                for name in paths:
                    call = call_of(name, L, getattr(torch, dtype), mode)
                    row = dict(path=name, dtype=dtype, L=L, mode=mode, kernels=kernels_per_call(call),
                               host_us=host_us(call), eager_us=eager_us(call), graph_us=graph_us(call))
                    rows.append(row)
                    print(f"{name:10} {dtype:9} {L:>6} {mode:8} {row['kernels']:>8.1f} {row['host_us']:>8.1f} "
                          f"{row['eager_us']:>9.1f} {row['graph_us']:>9.1f}", flush=True)
    if args.profile:
        call = call_of("seqrl", lengths[0], torch.float32, "fwd+bwd")
        eager_us(call, reps=20)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            call()
        torch.cuda.synchronize()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
