"""Recurrent PPO through the one Trainer against another checkout's PPO (e.g. the OnlineRunner of the main
before it): the same preset, env and seed, N env steps of training in each checkout's own process, then a
checksum of every parameter. Equal checksums mean the two trained the same network bit for bit.

    git worktree add /tmp/before <commit>
    python experiments/ppo_equivalence.py --other /tmp/before --agent gtrxl --length 10 --steps 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(root: str, agent: str, length: int, steps: int, seed: int) -> dict:
    sys.path[:0] = [root, f"{root}/experiments"]
    import torch

    import bench_online as bo

    torch.set_num_threads(1)
    env = bo.env_preset("tmaze", length)
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(bo, "build_trainer"):  # this checkout: the one Trainer
            t = bo.build_trainer(agent, env, steps, seed, "cpu", Path(tmp))
            while not t.done():
                t.iteration()
            policy, api = t.agent, "Trainer"
        else:  # a checkout from before it
            r = bo.build_runner(agent, env, steps, seed, "cpu", Path(tmp))
            while r.env_steps < steps:
                r.update(r.collect())
            policy, api = r.policy, "OnlineRunner"
    ps = [p.detach().double() for p in policy.parameters()]
    return {"api": api, "params": len(ps), "sum": float(sum(p.sum() for p in ps)),
            "abs_sum": float(sum(p.abs().sum() for p in ps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other")
    ap.add_argument("--agent", default="gtrxl", choices=["gtrxl", "lstm_ppo"])
    ap.add_argument("--length", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.agent, args.length, args.steps, args.seed)))
        return
    out = {}
    for label, root in (("this", str(HERE)), ("other", str(Path(args.other).resolve()))):
        cmd = [sys.executable, __file__, "--worker", root, "--agent", args.agent, "--length", str(args.length),
               "--steps", str(args.steps), "--seed", str(args.seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
        if res.returncode:
            raise SystemExit(f"{label} failed:\n{res.stderr[-3000:]}")
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
        print(label, out[label])
    same = out["this"]["sum"] == out["other"]["sum"] and out["this"]["abs_sum"] == out["other"]["abs_sum"]
    print("identical parameters" if same else "DIFFERENT parameters")


if __name__ == "__main__":
    main()
