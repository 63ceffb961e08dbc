"""The D4RL-style learner's speed: seqrl's GraphSAC against stable-baselines3's SAC, same run, same settings.

    python experiments/bench_sac.py --device cuda --env Hopper-v5 --steps 6000 --train-envs 1 16

Each row trains from scratch for `--steps` env steps (random actions for the first `--learning-starts`, then
one gradient step per env step collected, batch 256, SB3's defaults otherwise) and reports env steps per
second over the training part only (after `learning_starts`), i.e. acting + env + updates. SB3's SAC runs its own
`train` (host replay buffer, eager step); GraphSAC its device buffer and, on CUDA, the step as a CUDA graph.
Prints a markdown table and writes --out JSON.
"""

from __future__ import annotations

import argparse
import time

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from seqrl.data.sac import GraphSAC
from seqrl.io import atomic_write_json


class Clock(BaseCallback):
    """Wall time at the first env step past learning_starts and at the end."""

    def __init__(self, starts: int):
        super().__init__()
        self.starts, self.t0, self.n0 = starts, None, 0

    def _on_step(self) -> bool:
        if self.t0 is None and self.model.num_timesteps > self.starts:
            if self.model.device.type == "cuda":
                torch.cuda.synchronize()
            self.t0, self.n0 = time.perf_counter(), self.model.num_timesteps
        return True


def one(algo, env_id: str, n_envs: int, steps: int, starts: int, device: str, seed: int) -> dict:
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = algo("MlpPolicy", env, seed=seed, device=device, learning_starts=starts, gradient_steps=-1)
    clock = Clock(starts)
    model.learn(steps, callback=clock)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - clock.t0
    n = model.num_timesteps - clock.n0
    return {"learner": algo.__name__, "env": env_id, "train_envs": n_envs, "env_steps": n, "seconds": secs,
            "env_steps_per_s": n / secs, "updates": model._n_updates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--learning-starts", type=int, default=1000)
    ap.add_argument("--train-envs", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_sac.json")
    a = ap.parse_args()
    rows = []
    for n in a.train_envs:
        for algo in (SAC, GraphSAC):
            rows.append(one(algo, a.env, n, a.steps, a.learning_starts, a.device, a.seed))
            print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"\n{a.env} on {name}, {a.steps} env steps ({a.learning_starts} random first), batch 256, UTD 1\n")
    print("| learner | train envs | env steps/s | vs SB3 SAC |\n|---|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b["train_envs"] == r["train_envs"] and b["learner"] == "SAC")
        print(f"| {r['learner']} | {r['train_envs']} | {r['env_steps_per_s']:.0f} | "
              f"{r['env_steps_per_s'] / base['env_steps_per_s']:.2f}x |")
    atomic_write_json(a.out, {"device": name, "torch": torch.__version__, "command": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
