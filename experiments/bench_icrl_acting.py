"""Acting cost per env step of the in-context agents (DPT / AD: one network) as the history grows.

A batch of n trials has acted for H transitions (100, 1,000, 10,000: a Dark Room trial of 1, 10, 100
episodes); the next env steps cost, per step (`logits` + `feed_action` + `observe`, as `seqrl icrl` calls
them):
- step: Mamba carries its recurrent state (O(1) per step, whatever H); the transformer its KV cache of the
  last K-1 transitions (a sliding window: O(K) per step, bounded in H);
- recompute: every step re-reads the context from scratch in one forward (`encode`), what DPT's public code
  does: the transformer its window of K-1 transitions (O(K^2) per step), Mamba the whole history (O(H)).
Random weights (cost does not depend on them), Dark Room's spaces (10x10 cells, 5 actions), "s a r" tokens.
The time is the mean over `--steps` steps after the history, the fastest of `--repeats`, the two ways taking
turns (the least disturbed by other work on a shared machine).

    python experiments/bench_icrl_acting.py                        # CPU, the CPU run's size (32 x 2, K = 100)
    python experiments/bench_icrl_acting.py --embed 128 --layers 4 --context 400 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import gymnasium as gym
import numpy as np
import torch

from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def history(n: int, length: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 10, (n, length, 2), generator=g)
    act = torch.randint(0, 5, (n, length), generator=g)
    rew = (torch.rand(n, length, generator=g) < 0.1).float()
    return obs.to(device), act.to(device), rew.to(device)


@torch.no_grad()
def ms_per_step(agent, ctx, steps: int, how: str, window: int | None, device: torch.device) -> float:
    """Milliseconds per env step of `steps` steps after the history `ctx`, acting `how` ("step" or "recompute");
    `window`: the transitions a re-read keeps (the transformer's K-1; None: all)."""
    obs, act, rew = ctx
    n, H = act.shape
    done = torch.zeros(n, dtype=torch.bool, device=device)
    last = slice(-window, None) if window else slice(None)
    state = agent.encode(obs[:, last], act[:, last], rew[:, last])  # the history so far (or its window)
    new_obs, new_rew = obs[:, :steps], rew[:, :steps]
    sync(device)
    t0 = time.perf_counter()
    for t in range(steps):
        if how == "recompute":  # the context (or its window) from scratch, then this step's query
            state = agent.encode(torch.cat([obs, new_obs[:, :t]], 1)[:, last], torch.cat([act, act[:, :t]], 1)[:, last],
                                 torch.cat([rew, new_rew[:, :t]], 1)[:, last])
        logits, state = agent.logits(new_obs[:, t], state)
        a = logits.argmax(-1)
        state = agent.feed_action(a, state)
        state = agent.observe(state, new_rew[:, t], done)
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["transformer", "mamba"], choices=["transformer", "mamba"])
    ap.add_argument("--histories", type=int, nargs="+", default=[100, 1000, 10000], help="H, transitions so far")
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--context", type=int, default=100, help="K, transitions per training sample")
    ap.add_argument("--trials", type=int, default=20, help="n trials acting together")
    ap.add_argument("--steps", type=int, default=20, help="steps timed after the history")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = gym.spaces.MultiDiscrete([10, 10])
    spec = TaskSpec(space, gym.spaces.Discrete(5), np.zeros(2, np.float32), np.ones(2, np.float32),
                    EnvPreset(name="bench", env_id="seqrl/DarkRoom-v0", max_episode_steps=100))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} {platform.processor()}, {args.threads} thread(s)"
    print(f"device {device} ({where}), torch {torch.__version__}; width {args.embed} x {args.layers} layers, "
          f"K = {args.context}, {args.trials} trials per step\n")
    print("| backbone | history H | step (ms / env step) | recompute (ms / env step) | recompute / step |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for bb in args.backbones:
        over = {"embed_dim": args.embed, "n_layers": args.layers, "n_heads": args.heads, "context_len": args.context,
                "tokens": "s a r", "dropout": 0.0} | ({"expand": 1, "d_state": 8} if bb == "mamba" else {})
        preset = load_agent("dpt" if bb == "transformer" else "dpt_mamba", {"policy": over})
        torch.manual_seed(0)
        agent = policy_class(preset.agent)(preset.policy, spec).to(device).eval()
        window = args.context - 1 if bb == "transformer" else None
        for H in args.histories:
            ctx = history(args.trials, H, device)
            ms = {"step": float("inf"), "recompute": float("inf")}
            for _ in range(args.repeats):
                for how in ms:
                    ms[how] = min(ms[how], ms_per_step(agent, ctx, args.steps, how, window, device))
            rows.append({"backbone": bb, "history": H, "step_ms": ms["step"], "recompute_ms": ms["recompute"],
                         "ratio": ms["recompute"] / ms["step"]})
            print(f"| {bb} | {H:,} | {ms['step']:.2f} | {ms['recompute']:.2f} | "
                  f"{ms['recompute'] / ms['step']:.1f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "machine": where, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
