"""Time of the world model's backbone alone (forward + backward, no encoder/decoder), per backbone and sequence
length, on the CPU by default: the part of a world-model update that differs between S4WM, RSSM and TSSM.
The RSSM row runs the GRU step by step, as RSSM training must (its posterior reads h_t).

    python experiments/wm_bench_backbone.py --lens 256 1024 --batch 2 --d-model 64 --episode 18
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from seqrl.nn.rnn import GRU
from seqrl.nn.s4 import S4Backbone
from seqrl.nn.transformer import CausalTransformer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--episode", type=int, default=18, help="an episode start every this many steps (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, dev = args.d_model, args.device
    rows = []
    for L in args.lens:
        nets = {"s4": S4Backbone(d, args.layers, d_state=16), "gru": GRU(d, args.layers),
                "transformer": CausalTransformer(d, args.layers, 4, window=L, dropout=0.0, activation="gelu")}
        reset = torch.zeros(args.batch, L, dtype=torch.bool, device=dev)
        if args.episode:
            reset[:, :: args.episode] = True
        for name, net in nets.items():
            net = net.to(dev)
            x = torch.randn(args.batch, L, d, device=dev, requires_grad=True)
            times = []
            for i in range(4):
                t = time.perf_counter()
                if name == "gru":  # RSSM: one step at a time
                    s, ys = net.initial_state(args.batch, dev), []
                    for k in range(L):
                        s = net.reset(s, reset[:, k])
                        y, s = net.step(x[:, k], s)
                        ys.append(y)
                    y = torch.stack(ys, 1)
                else:
                    y, _ = net(x, None, reset=reset)
                y.square().mean().backward()
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t)
            rows.append({"backbone": name, "seq_len": L, "batch": args.batch, "ms": 1000 * statistics.median(times)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
