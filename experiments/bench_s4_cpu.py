"""S4 layer and backbone speed on the CPU: the scan path against the FFT path, and S4Backbone against MambaBackbone
and the LSTM.

    python experiments/bench_s4_cpu.py [--threads 2] [--reps 5] [--reset-every 50] [--only layer|resets|backbone]
        [--out docs/results/bench_s4_cpu.json]
    python experiments/bench_s4_cpu.py --reset-sweep 1,2,4,8,50
    python experiments/bench_s4_cpu.py --threads 1 --only chunked --lengths 32,128,1024

1. `S4Layer` (H=64, B=8, d_state 64: S4D 64 channels x 32 complex modes, S5 32 complex modes), forward + backward of a
   random cotangent, float32, through the scan path (`seqrl.kernels.linear_scan`) and the FFT path, at T from 16 to
   1024, without resets; this sets `seqrl.nn.s4.FFT_MIN_LEN`. Then the same with episode resets (each step starts an
   episode with probability 1/reset_every, per row), the scan against the FFT path over episode segments
   (forced at every T, whatever `seqrl.nn.s4.FFT_RESET_MIN_LEN` says; planning the segments included), at T from
   64 (`--reset-lengths`); this sets FFT_RESET_MIN_LEN. `--reset-sweep` instead times both paths at T=1024 for
   several reset rates. `--only chunked`: S4D's three paths side by side (the scan, the FFT path and the chunked
   form that CUDA takes, `S4Layer._chunked`), without resets and with a start every reset_every steps.
2. Backbones at B=8, T=1024, d=64, 2 layers (blocks) each, float32, forward + backward of the mean of the output:
   S4Backbone (s4d and s5, zoh, d_state 64) on its default path (the FFT one), MambaBackbone (d_state 16,
   expand 2, d_conv 4), seqrl's LSTM; then the same with episode resets (each step starts an episode with
   probability 1/100, per env): S4 takes its FFT path over episode segments (and, as "s4-...-scan", its scan
   path, which it took before), Mamba cuts the segment at every column where an env resets, the LSTM goes step
   by step.

Each measurement runs in a fresh process (`--one`): after a run that allocates large tensors, the allocator's
state made later, unrelated runs in the same process 3-10x slower here. Times are the fastest of `reps` runs after
one warm-up, in ms, with `torch.set_num_threads(threads)` (the fastest: the machine these ran on was shared, and
other processes only add time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

B, H, D_STATE = 8, 64, 64


def timed(fn, reps: int) -> float:
    """The fastest of `reps` runs after a warm-up, in ms: on a shared machine other processes only add time."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def one(cfg: dict, reps: int) -> dict:
    """Time one configuration: {"layer": kind, "T": T, "path": "scan" | "fft", "reset_every": r or None} or
    {"backbone": name, "resets": bool}."""
    from seqrl.nn import s4 as s4_mod
    from seqrl.nn.rnn import LSTM
    from seqrl.nn.mamba import MambaBackbone
    from seqrl.nn.s4 import S4Backbone, S4Layer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if "layer" in cfg:
        m = S4Layer(H, D_STATE, kind=cfg["layer"], fft_min_len=1 if cfg["path"] == "fft" else None)
        if cfg["path"] == "chunked":  # the scan's place taken by the chunked form (this process only)
            S4Layer._scan = lambda self, u, h0, a, b, C, reset: self._chunked(u, h0, torch.log(a), b, C, reset)
        u = torch.randn(B, cfg["T"], H, generator=g).requires_grad_()
        cot = torch.randn(B, cfg["T"], H, generator=g)
        r = cfg.get("reset_every")
        reset = torch.rand(B, cfg["T"], generator=g) < 1 / r if r else None
        s4_mod.FFT_RESET_MIN_LEN = {"s4d": 0, "s5": 0}  # "fft": the FFT path at every length
        assert m._fft_ok(u, reset) == (cfg["path"] == "fft")

        def run():
            y, _ = m(u, reset=reset)
            (y * cot).sum().backward()
        return {**cfg, "ms": timed(run, reps)}
    T, d = 1024, H
    m = {"s4-s4d": lambda: S4Backbone(d, 2, d_state=D_STATE, kind="s4d"),
         "s4-s5": lambda: S4Backbone(d, 2, d_state=D_STATE, kind="s5"),
         "s4-s4d-scan": lambda: S4Backbone(d, 2, d_state=D_STATE, kind="s4d", fft_min_len=None),
         "s4-s5-scan": lambda: S4Backbone(d, 2, d_state=D_STATE, kind="s5", fft_min_len=None),
         "mamba": lambda: MambaBackbone(d, 2, d_state=16, d_conv=4, expand=2),
         "lstm": lambda: LSTM(d, 2)}[cfg["backbone"]]()
    x = torch.randn(B, T, d, generator=g)
    reset = (torch.rand(B, T, generator=g) < 0.01) if cfg["resets"] else None

    def run():
        y, _ = m(x, reset=reset)
        y.mean().backward()
        m.zero_grad(set_to_none=True)
    return {**cfg, "params": sum(p.numel() for p in m.parameters()), "ms": timed(run, reps)}


def measure(cfg: dict, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg), "--threads", str(args.threads),
                          "--reps", str(args.reps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--lengths", default="16,32,64,128,256,1024")
    p.add_argument("--reset-every", type=float, default=50.0, help="mean steps between resets in the layer rows")
    p.add_argument("--reset-lengths", default="64,128,256,512,1024")
    p.add_argument("--reset-sweep", default=None, help="e.g. 2,3,4,6,8,16: reset_every values at T=1024, alone")
    p.add_argument("--only", default=None, help="layer | resets | backbone | chunked: one part only")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(json.loads(args.one), args.reps)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, fastest of {args.reps}, a fresh process each")
    layers, layers_resets, backbones = [], [], []
    if args.reset_sweep:
        for kind in ("s4d", "s5"):
            for r in (float(x) for x in args.reset_sweep.split(",")):
                scan, fft = (measure({"layer": kind, "T": 1024, "path": path, "reset_every": r}, args)["ms"]
                             for path in ("scan", "fft"))
                print(f"layer {kind:3s} T= 1024 resets every {r:5.1f}  fwd+bwd  scan {scan:8.1f} ms  fft "
                      f"{fft:8.1f} ms  scan/fft {scan / fft:5.2f}", flush=True)
        return
    if args.only == "chunked":
        for r in (None, args.reset_every):
            for T in (int(t) for t in args.lengths.split(",")):
                ms = {path: measure({"layer": "s4d", "T": T, "path": path, "reset_every": r}, args)["ms"]
                      for path in ("scan", "fft", "chunked")}
                layers.append({"kind": "s4d", "T": T, "reset_every": r, **{f"{k}_ms": v for k, v in ms.items()}})
                print(f"layer s4d T={T:5d} resets every {r or 0:g}  fwd+bwd  " + "  ".join(
                    f"{k} {v:8.1f} ms" for k, v in ms.items()) + f"  chunked/fft {ms['chunked'] / ms['fft']:5.2f}",
                    flush=True)
    for kind in ("s4d", "s5") if args.only in (None, "layer") else ():
        for T in (int(t) for t in args.lengths.split(",")):
            scan, fft = (measure({"layer": kind, "T": T, "path": path}, args)["ms"] for path in ("scan", "fft"))
            layers.append({"kind": kind, "T": T, "scan_ms": scan, "fft_ms": fft})
            print(f"layer {kind:3s} T={T:5d}  fwd+bwd  scan {scan:8.1f} ms  fft {fft:8.1f} ms  scan/fft "
                  f"{scan / fft:5.2f}", flush=True)
    for kind in ("s4d", "s5") if args.only in (None, "resets") else ():
        for T in (int(t) for t in args.reset_lengths.split(",")):
            scan, fft = (measure({"layer": kind, "T": T, "path": path, "reset_every": args.reset_every}, args)["ms"]
                         for path in ("scan", "fft"))
            layers_resets.append({"kind": kind, "T": T, "reset_every": args.reset_every, "scan_ms": scan,
                                  "fft_ms": fft})
            print(f"layer {kind:3s} T={T:5d} resets every {args.reset_every:g}  fwd+bwd  scan {scan:8.1f} ms  fft "
                  f"{fft:8.1f} ms  scan/fft {scan / fft:5.2f}", flush=True)
    names = ("s4-s4d", "s4-s5", "s4-s4d-scan", "s4-s5-scan", "mamba", "lstm")
    for name in names if args.only in (None, "backbone") else ():
        plain, with_resets = (measure({"backbone": name, "resets": r}, args) for r in (False, True))
        backbones.append({"backbone": name, "params": plain["params"], "ms": plain["ms"],
                          "ms_with_resets": with_resets["ms"]})
        print(f"backbone {name:7s} params {plain['params']:7d}  fwd+bwd {plain['ms']:8.1f} ms  with resets "
              f"{with_resets['ms']:8.1f} ms", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "reps": args.reps, "torch": torch.__version__,
                                        "layer": layers, "layer_resets": layers_resets, "backbone": backbones},
                                       indent=1))


if __name__ == "__main__":
    main()
