"""Rollout cost per environment step: Decision Transformer (KV cache) vs Decision Mamba (recurrent step).

For each context of C steps, a batch of envs acts together (one `act` + `observe` per env step, as
`seqrl.runners.evaluate` calls them) and we time the steps that follow C steps of history:

- DT: context_len = C, so its KV cache holds the last 3C - 1 tokens (the attention span it was trained
  with); the cache is filled with C steps' worth of (random) keys and values, all valid, then we time.
  A step costs O(C).
- DM: the state is the whole episode so far, of fixed size; we roll the policy C real steps, then time.
  A step costs O(1): the table should be flat in C.

Both at the width of the papers' Gym settings (d=128, 3 layers; DM: expand 2, state 16), random
weights (cost does not depend on them), a HalfCheetah-sized task (17-d observation, 6-d action).

    python experiments/bench_rollout.py                      # CPU (one thread)
    python experiments/bench_rollout.py --device cuda        # GPU
Writes docs/results/bench_rollout_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from seqrl.nn.transformer import KVState
from seqrl.policies.base import TaskSpec
from seqrl.policies.dm import DecisionMamba, DMConfig
from seqrl.policies.dt import DecisionTransformer, DTConfig
from seqrl.presets import EnvPreset

ROOT = Path(__file__).resolve().parent.parent


def task(max_steps: int) -> TaskSpec:
    obs = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    act = gym.spaces.Box(-1, 1, (6,), np.float32)
    env = EnvPreset(name="bench", env_id="HalfCheetah-v5", max_episode_steps=max_steps)
    return TaskSpec(obs, act, np.zeros(17, np.float32), np.ones(17, np.float32), env)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(policy, state, n_envs: int, steps: int, device: torch.device) -> tuple[float, object]:
    """Seconds per env step (all envs together) over `steps` act + observe calls."""
    obs = torch.randn(steps + 3, n_envs, 17, device=device)
    rew = torch.zeros(n_envs, device=device)
    done = torch.zeros(n_envs, dtype=torch.bool, device=device)
    for i in range(3):  # warm-up (allocator, kernels)
        _, state = policy.act(obs[i], state)
        state = policy.observe(state, rew, done)
    sync(device)
    t0 = time.perf_counter()
    for i in range(3, steps + 3):
        _, state = policy.act(obs[i], state)
        state = policy.observe(state, rew, done)
    sync(device)
    return (time.perf_counter() - t0) / steps, state


@torch.no_grad()
def bench_dt(C: int, n_envs: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    dt = DecisionTransformer(DTConfig(embed_dim=128, n_layers=3, n_heads=1, context_len=C, dropout=0.0),
                             task(4 * C + 100)).to(device).eval()
    state = dt.initial_state(n_envs, device, target_return=0.0)
    kv = state.kv  # C steps of history: every cache slot holds a token of the current episode
    state.kv = KVState(tuple(torch.randn_like(k) for k in kv.k), tuple(torch.randn_like(v) for v in kv.v),
                       torch.ones_like(kv.valid), torch.full_like(kv.pos, 3 * C))
    state.t = torch.full_like(state.t, C)
    sec, _ = time_steps(dt, state, n_envs, steps, device)
    return sec


@torch.no_grad()
def bench_dm(C: int, n_envs: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    dm = DecisionMamba(DMConfig(embed_dim=128, n_layers=3, context_len=20, dropout=0.0), task(4 * C + 100))
    dm = dm.to(device).eval()
    state = dm.initial_state(n_envs, device, target_return=0.0)
    if C > 3:
        _, state = time_steps(dm, state, n_envs, C - 3, device)  # a real rollout of C steps of history
    sec, _ = time_steps(dm, state, n_envs, steps, device)
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--envs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20, help="timed env steps per point")
    ap.add_argument("--contexts", type=int, nargs="+", default=[20, 200, 2000])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for C in args.contexts:
        dt_s = bench_dt(C, args.envs, args.steps, device)
        dm_s = bench_dm(C, args.envs, args.steps, device)
        rows.append({"context_steps": C, "dt_ms_per_step": 1e3 * dt_s, "dm_ms_per_step": 1e3 * dm_s})
        print(f"context {C:>5}: DT (KV cache, {3 * C - 1} tokens) {1e3 * dt_s:8.2f} ms/step   "
              f"DM (recurrent) {1e3 * dm_s:8.2f} ms/step   ({args.envs} envs per step)", flush=True)
    print()
    print("| context (steps) | DT, KV cache (ms / env step) | DM, recurrent (ms / env step) |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['context_steps']} | {r['dt_ms_per_step']:.2f} | {r['dm_ms_per_step']:.2f} |")
    name = "cuda" if device.type == "cuda" else "cpu"
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": args.threads, "envs": args.envs, "timed_steps": args.steps, "torch": torch.__version__,
            "model": "d=128, 3 layers; DT 1 head; DM expand 2, state 16, multi-grained"}
    out = ROOT / "docs" / "results" / f"bench_rollout_{name}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
