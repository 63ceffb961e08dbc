"""Where a world-model agent loses DistractingMemory: at the door step of replayed episodes, read through the
posterior over the real frames, the actor's probability of the right door and the world model's reward for each
door (the one taken and the other), from an online run's checkpoint and the replay saved beside it.

    python experiments/wm_agent_door.py runs/wm/distracting16_s4wm_agent_s0/checkpoint.pt --episodes 200

A right door is the taken one where the episode paid +1, the other where it paid -1 (two cues, two doors)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from seqrl.checkpoint import policy_from_checkpoint
from seqrl.data.samplers import windows_at
from seqrl.data.store import ReplayStore
from seqrl.policies.world_model import symexp


@torch.no_grad()
def door_report(checkpoint: Path, episodes: int) -> dict:
    agent = policy_from_checkpoint(checkpoint)[0].eval()
    store = ReplayStore.load(checkpoint.parent / "replay.npz")
    n = int(store.episode_lengths.max())  # whole episodes: the cue, the hallway, the doors
    chosen = np.flatnonzero(store.episode_lengths == n)[-episodes:]  # the newest
    b = windows_at(store, store.ep_start[chosen], n)
    first = torch.zeros(b.act.shape[:2], dtype=torch.bool)
    first[:, 0] = True
    post = agent.wm.posterior_pass(b.obs, b.act, first, sample=False)
    h, z = post["h"][:, -1], post["z"][:, -1]
    probs = agent.policy(torch.cat([h, z], -1)).probs  # (B, 2)
    taken, paid = b.act[:, -1].long().view(-1), b.rew[:, -1].view(-1)
    right = torch.where(paid > 0, taken, 1 - taken)
    rew = torch.stack([symexp(agent.wm.reward_cont(h, z, agent.wm.action_input(torch.full_like(taken, a)))[0]).mean(0)
                       for a in (0, 1)], 1)  # (B, 2): the reward the world model gives each door
    r_right, r_wrong = rew.gather(1, right[:, None])[:, 0], rew.gather(1, 1 - right[:, None])[:, 0]
    return {"checkpoint": str(checkpoint), "episodes": len(chosen),
            "actor_p_right": float(probs.gather(1, right[:, None]).mean()),
            "actor_argmax_right": float((probs.argmax(1) == right).float().mean()),
            "actor_p_door0": float(probs[:, 0].mean()),
            "actor_door_entropy": float(-(probs * probs.log()).sum(-1).mean()), "entropy_max": math.log(2),
            "wm_signs_right": float(((r_right > 0) & (r_wrong < 0)).float().mean()),
            "wm_reward_right": float(r_right.mean()), "wm_reward_wrong": float(r_wrong.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    for c in args.checkpoints:
        print(json.dumps(door_report(c, args.episodes)))


if __name__ == "__main__":
    main()
