"""Acting cost per env step of DT and DM in both acting modes, against the context K and the episode length.

- stream: DT steps a KV cache of 3K-1 tokens (O(K) per step), DM a recurrent state (O(1) per step);
- window: every step re-encodes the last K steps from an empty state, as a training window (DT O(K^2),
  DM O(K) per step).

A batch of n envs acts together through whole episodes of L steps (`act` + `observe` per step, as
`seqrl.runners.evaluate` calls them; the first K-1 steps of an episode hold fewer than K steps, and
window acting still runs its full 3K-token forward, as stream acting runs its full cache). The time is
the mean over all L steps of an episode, after a few warm-up steps; the best of `--repeats` episodes,
the two modes taking turns (the least disturbed by other work on a shared machine). Random weights
(cost does not depend on them), a Pendulum-sized task (3-d observation, 1-d action) unless told otherwise.

    python experiments/bench_acting.py                                   # CPU, quickstart sizes
    python experiments/bench_acting.py --agents dt --obs-dim 17 --act-dim 6   # DT at the paper's size (128 x 3)
    python experiments/bench_acting.py --agents dt dm --device cuda   # GPU; agents/dm.toml is the authors' 768 x 24
    python experiments/bench_acting.py --contexts 5 20 --lengths 50 200 --envs 50 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import gymnasium as gym
import numpy as np
import torch

from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent


def task(obs_dim: int, act_dim: int, max_steps: int) -> TaskSpec:
    obs = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act = gym.spaces.Box(-1, 1, (act_dim,), np.float32)
    env = EnvPreset(name="bench", env_id="Pendulum-v1", max_episode_steps=max_steps, target_returns=(0.0,))
    return TaskSpec(obs, act, np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), env)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def ms_per_step(agent, n_envs: int, length: int, obs_dim: int, device: torch.device, warmup: int = 3) -> float:
    """Milliseconds per env step (n envs together), the mean over an episode of `length` steps."""
    obs = torch.randn(length + warmup, n_envs, obs_dim, device=device)
    rew = torch.randn(length + warmup, n_envs, device=device)
    live = torch.zeros(n_envs, dtype=torch.bool, device=device)
    state = agent.initial_state(n_envs, device)
    for i in range(warmup):  # allocator, kernels; then a fresh episode
        _, state = agent.act(obs[i], state)
        state = agent.observe(state, rew[i], live)
    state = agent.initial_state(n_envs, device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + length):
        _, state = agent.act(obs[i], state)
        state = agent.observe(state, rew[i], live)
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", nargs="+", default=["dt_small", "dm_small"], help="agent presets (their DT/DM sizes)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[5, 20, 60], help="K, steps per window")
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 200], help="episode lengths L")
    ap.add_argument("--envs", type=int, default=50, help="n envs acting together")
    ap.add_argument("--obs-dim", type=int, default=3)
    ap.add_argument("--act-dim", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--repeats", type=int, default=3, help="episodes timed per point; the fastest counts")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"device {device} ({where}), {args.envs} envs per step, torch {torch.__version__}\n")
    print("| agent | K | episode steps | stream (ms / step) | window (ms / step) | window / stream |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in args.agents:
        preset = load_agent(name)
        for K in args.contexts:
            for L in args.lengths:
                agents, ms = {}, {"stream": float("inf"), "window": float("inf")}
                for mode in ms:
                    cfg = dataclasses.replace(preset.policy, context_len=K, dropout=0.0, act_mode=mode)
                    torch.manual_seed(0)
                    agent = policy_class(preset.agent)(cfg, task(args.obs_dim, args.act_dim, max(L, 1000)))
                    agents[mode] = agent.to(device).eval()
                for _ in range(args.repeats):
                    for mode, agent in agents.items():
                        ms[mode] = min(ms[mode], ms_per_step(agent, args.envs, L, args.obs_dim, device))
                rows.append({"agent": name, "K": K, "episode_steps": L, "stream_ms": ms["stream"],
                             "window_ms": ms["window"], "ratio": ms["window"] / ms["stream"]})
                print(f"| {name} | {K} | {L} | {ms['stream']:.2f} | {ms['window']:.2f} | "
                      f"{ms['window'] / ms['stream']:.1f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": args.threads, "envs": args.envs, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
