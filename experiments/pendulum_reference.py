"""Reference returns for the quickstart task (envs/pendulum.toml: ref_min_score, ref_max_score).

    python experiments/pendulum_reference.py [--episodes 500]

Like D4RL's references: the mean return of uniformly random actions (score 0) and of the scripted
expert controller (score 100), over episodes seeded 1_000_000 + i (disjoint from the data's seeds).
Also prints the medium level (controller with epsilon-random actions) for the README.
"""

import argparse

import numpy as np

from seqrl.data.collect import pendulum_controller, rollout
from seqrl.presets import load_env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=500)
    args = ap.parse_args()
    env = load_env("pendulum")
    for name, eps in (("random", 1.0), (f"medium (epsilon={env.collect.medium_epsilon})", env.collect.medium_epsilon),
                      ("expert", 0.0)):
        episodes = rollout(pendulum_controller(eps, seed=1), env.env_id, args.episodes * env.max_episode_steps,
                           n_envs=50, seed=1_000_000, desc=name, max_episode_steps=env.max_episode_steps)
        returns = np.array([e["rew"].sum() for e in episodes])
        print(f"{name:24s} return {returns.mean():9.1f} ± {returns.std():6.1f}  over {len(returns)} episodes")


if __name__ == "__main__":
    main()
