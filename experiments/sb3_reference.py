"""Stable-Baselines3 at its defaults on a Gymnasium task, the reactive-control peer of the world-model agent
(docs/results.md, "World-model agent"): train for a budget of env steps, then the mean return of deterministic
evaluation episodes, per seed.

    python experiments/sb3_reference.py --algo ppo --env CartPole-v1 --steps 20000 --seeds 0 1 2 \
        --json docs/results/wm_agent/cartpole_sb3_ppo.json

One torch thread (as the seqrl runs it is compared with). Evaluation episodes are seeded 10_000 + i.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC

ALGOS = {"ppo": PPO, "sac": SAC}


def evaluate(model, env_id: str, episodes: int) -> list[float]:
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=sorted(ALGOS), required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        t = time.perf_counter()
        model = ALGOS[args.algo]("MlpPolicy", args.env, seed=seed, device="cpu")
        model.learn(total_timesteps=args.steps)
        returns = evaluate(model, args.env, args.episodes)
        runs.append(dict(seed=seed, return_mean=float(np.mean(returns)), return_std=float(np.std(returns)),
                         wall_s=time.perf_counter() - t))
        print(f"SB3 {args.algo.upper()} {args.env} {args.steps} steps, seed {seed}: {runs[-1]['return_mean']:.1f} "
              f"± {runs[-1]['return_std']:.1f} over {args.episodes} episodes, {runs[-1]['wall_s']:.0f} s", flush=True)
    means = [r["return_mean"] for r in runs]
    print(f"over seeds: {np.mean(means):.1f} ± {np.std(means):.1f}")
    if args.json:
        args.json.write_text(json.dumps(dict(algo=args.algo, env=args.env, steps=args.steps,
                                             episodes=args.episodes, runs=runs), indent=1))


if __name__ == "__main__":
    main()
