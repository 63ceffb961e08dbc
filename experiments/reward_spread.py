"""The spread of each task's rewards as the world model's reward head sees them: the mean and variance of symlog(r)
over random-action steps, and the reward loss's weight that `reward_weight` makes of that variance at the agents'
reward_loss_scale of 100 (docs/history.md, "The world-model agent on a CPU": sparse rewards have a small
spread, and sit at the largest weight).

    python experiments/reward_spread.py [--steps 20000]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import seqrl.envs  # noqa: F401  (registers the seqrl/ envs)
from seqrl.policies.world_model import spread_weight, symlog
from seqrl.presets import load_agent

TASKS = [("CartPole-v1", {}), ("Pendulum-v1", {}), ("seqrl/TMaze-v0", {"length": 10}),
         ("seqrl/TMaze-v0", {"length": 30}), ("seqrl/TMaze-v0", {"length": 100}), ("seqrl/RepeatPrevious-v0", {}),
         ("seqrl/DistractingMemory-v0", {}), ("seqrl/DistractingMemory-v0", {"width": 32})]


def symlog_rewards(env_id: str, kwargs: dict, steps: int, seed: int = 0) -> np.ndarray:
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    rewards = np.empty(steps)
    for t in range(steps):
        _, rewards[t], terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return symlog(torch.from_numpy(rewards)).numpy()  # the reward head's targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    args = ap.parse_args()
    cap = load_agent("s4wm_agent").policy.world_model.reward_loss_scale  # the agents' largest weight
    print("| task | mean of symlog(r) | variance of symlog(r) | weight |\n|---|---|---|---|")
    for env_id, kw in TASKS:
        s = symlog_rewards(env_id, kw, args.steps)
        name = env_id + "".join(f" {k}={v}" for k, v in kw.items())
        weight = spread_weight(torch.tensor(s.var()), cap).item()
        print(f"| {name} | {s.mean():.4f} | {s.var():.5f} | {weight:.1f} |")


if __name__ == "__main__":
    main()
