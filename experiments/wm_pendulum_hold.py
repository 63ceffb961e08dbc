"""Does a world-model agent's imagination let it hold Pendulum up? A diagnosis of trained `s4wm_agent` checkpoints
on Pendulum-v1 (docs/history.md, "Why the reward weight cost Pendulum"), each run on the same inputs:

1. real: 400-step episodes from 16 seeded starts (twice the env's limit, so that holding the top shows), the
   actor's mode; return over steps 0-200 and 200-400, the share of steps 200-400 upright (|angle| < 0.3).
2. dream: from each episode's first real upright state after step 32 (the steps before it the posterior's context), 60
   imagined steps with the actor sampled, the latents z sampled from the prior (as training imagines) or at the
   prior's mode; the share of dreams still upright (decoded |angle| < 0.5) after 15, 30 and 59 steps.
3. at real upright states: KL(posterior || prior), the posterior's entropy (categorical latents) and the critic.

    python experiments/wm_pendulum_hold.py rule=runs/pend_rule/checkpoint.pt one=runs/pend_one/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch

from seqrl.checkpoint import policy_from_checkpoint
from seqrl.policies.world_model import _log_probs, latent_kl, symexp

N, T, CONTEXT, DREAM = 16, 400, 32, 60


def real_episodes(agent) -> dict[str, np.ndarray]:
    envs = gym.make_vec("Pendulum-v1", num_envs=N, vectorization_mode="sync", max_episode_steps=T)
    obs, _ = envs.reset(seed=[10_000 + i for i in range(N)])
    state = agent.initial_state(N, "cpu")
    O, A, R = [], [], []
    for _ in range(T):
        with torch.no_grad():
            a, state = agent.act(torch.as_tensor(obs), state)
        O.append(obs)
        A.append(a.numpy())
        obs, r, *_ = envs.step(a.numpy())
        R.append(r)
    envs.close()
    O, A, R = np.stack(O, 1), np.stack(A, 1), np.stack(R, 1)
    return {"obs": O, "act": A, "rew": R, "up": np.abs(np.arctan2(O[..., 1], O[..., 0])) < 0.3}


@torch.no_grad()
def diagnose(agent) -> dict[str, float]:
    ep, wm = real_episodes(agent), agent.wm
    out = {"return_0_200": float(ep["rew"][:, :200].sum(1).mean()),
           "return_200_400": float(ep["rew"][:, 200:].sum(1).mean()),
           "upright_share_200_400": float(ep["up"][:, 200:].mean())}
    starts = [(e, int(ts[0])) for e in range(N)
              if len(ts := [t for t in np.flatnonzero(ep["up"][e]) if CONTEXT <= t < T - DREAM])]
    obs = torch.as_tensor(np.stack([ep["obs"][e, t - CONTEXT:t] for e, t in starts])).repeat(4, 1, 1)
    act = torch.as_tensor(np.stack([ep["act"][e, t - CONTEXT:t] for e, t in starts])).repeat(4, 1, 1)
    first = torch.zeros(obs.shape[:2], dtype=torch.bool)
    first[:, 0] = True
    out["dream_starts"] = len(starts)
    for how, sample in (("sampled", True), ("mode", False)):
        torch.manual_seed(0)
        ctx = wm.posterior_pass(obs, act, first, sample=False)  # env actions; imagination takes the actor's units
        h, z, state, up, rew = ctx["h"][:, -1], ctx["z"][:, -1], ctx["state"], [], 0.0
        for _ in range(DREAM):
            f = torch.cat([h, z], -1)
            a = agent.policy(f).sample().clamp(-1, 1)
            rew = rew + symexp(wm.reward_cont(h, z, a)[0][0])
            o = wm.from_target(wm.decoder(f))
            up.append((torch.atan2(o[:, 1], o[:, 0]).abs() < 0.5).float().mean().item())
            h, z, state = wm.dream_step(z, a, state, sample)
        out[f"dream_z_{how}_upright_15_30_59"] = [round(up[i], 3) for i in (15, 30, 59)]
        out[f"dream_z_{how}_reward_60"] = float(rew.mean())
    first = torch.zeros(N, T, dtype=torch.bool)
    first[:, 0] = True
    p = wm.posterior_pass(torch.as_tensor(ep["obs"]), torch.as_tensor(ep["act"]), first, sample=False)
    up = torch.as_tensor(ep["up"])
    up[:, :8] = False
    logq = _log_probs(p["post"], wm.config)
    out["kl_upright"] = float(latent_kl(p["post"], p["prior"], wm.config)[up].mean())
    out["posterior_entropy_upright"] = float((-(logq.exp() * logq).sum((-2, -1)))[up].mean())
    out["critic_upright"] = float(symexp(agent.critic(torch.cat([p["h"], p["z"]], -1))[..., 0])[up].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=CHECKPOINT")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rec = {}
    for run in args.runs:
        name, path = run.split("=", 1)
        agent = policy_from_checkpoint(path)[0].eval()
        rec[name] = {"checkpoint": path, **diagnose(agent)}
        print(name, json.dumps(rec[name]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
