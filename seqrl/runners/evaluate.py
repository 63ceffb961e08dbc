"""Evaluation: trials in a Gymnasium vector env, one batched agent call per step.

Dimension letters: n trials (one env each), E episodes per trial.

A trial is E consecutive episodes of one env (the agent's `eval_protocol().episodes`; 1 for most
agents). At an episode end the env resets at once (same-step autoreset) and the agent's `observe` sees
`done`: it resets its state or, for in-context agents, keeps it across the episodes of the trial. The
result holds every episode's return in order, (n, E): the in-context curve is its mean over trials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import seqrl.envs  # noqa: F401  registers the seqrl/... env ids for gym.make
from seqrl.data.store import check_spaces, obs_tensor
from seqrl.errors import DataError
from seqrl.presets import EnvPreset


def normalized_score(returns: np.ndarray, ref_scores: tuple[float, float]) -> np.ndarray:
    """D4RL normalised score: 0 at the random reference return, 100 at the expert's."""
    lo, hi = ref_scores
    if hi == lo:
        raise DataError(f"reference scores {ref_scores} are equal: cannot normalise")
    return 100.0 * (np.asarray(returns, np.float64) - lo) / (hi - lo)


@dataclass
class EvalResult:
    returns: np.ndarray  # (n, E) undiscounted return of each episode, in order
    lengths: np.ndarray  # (n, E)
    env_steps_per_s: float
    normalized: np.ndarray | None = None  # (n, E) D4RL normalised scores, when reference scores are known
    success: np.ndarray | None = None  # (n, E) info["success"] at each episode's end (NaN where not reported)

    def summary(self) -> dict[str, float]:
        """Means and standard deviations over all episodes; with E > 1 also the last episode's mean return."""
        out = {"return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
               "length_mean": float(self.lengths.mean()), "env_steps_per_s": self.env_steps_per_s}
        if self.normalized is not None:
            out |= {"score_mean": float(self.normalized.mean()), "score_std": float(self.normalized.std())}
        if self.success is not None and not np.isnan(self.success).all():
            out["success_rate"] = float(np.nanmean(self.success))
        if self.returns.shape[1] > 1:
            out["last_episode_return_mean"] = float(self.returns[:, -1].mean())
        return out

    def curve(self) -> np.ndarray:
        """(E,) mean return of the e-th episode of a trial: the in-context learning curve."""
        return self.returns.mean(0)


class RandomPolicy:
    """Uniform random actions: the 0 of the normalised score."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def initial_state(self, n_envs: int, device: Any) -> int:
        return n_envs

    def act(self, obs: torch.Tensor, state: int):
        return torch.as_tensor(np.stack([self.action_space.sample() for _ in range(state)])), state

    def observe(self, state: int, reward: torch.Tensor, done: torch.Tensor) -> int:
        return state


@torch.no_grad()
def evaluate(agent: Any, env: EnvPreset | str, trials: int, seed: int = 0, device: str | torch.device = "cpu",
             condition: dict[str, Any] | None = None, ref_scores: tuple[float, float] | None = None,
             episodes: int = 1) -> EvalResult:
    """Run `trials` trials of `episodes` consecutive episodes each, all trials at once, one env each.

    `env`: an env preset (its id, episode limit and constructor kwargs) or a bare Gymnasium id. Env i is
    seeded with `seed + i`, so two agents evaluated with the same seed face the same starts. `condition`
    goes to `agent.initial_state` (DT: `target_return`)."""
    if isinstance(env, str):
        env = EnvPreset(name=env, env_id=env, max_episode_steps=gym.registry[env].max_episode_steps or 1000)
    envs = gym.make_vec(env.env_id, num_envs=trials, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        max_episode_steps=env.max_episode_steps, **env.env_kwargs)
    spec = getattr(agent, "spec", None)
    if spec is not None:
        try:
            check_spaces(spec.observation_space, spec.action_space, envs, "the agent")
        except DataError:
            envs.close()
            raise
    was_training = getattr(agent, "training", False)
    if hasattr(agent, "eval"):
        agent.eval()
    try:
        obs, _ = envs.reset(seed=seed)
        state = agent.initial_state(trials, device, **(condition or {}))
        returns = np.zeros((trials, episodes))
        lengths = np.zeros((trials, episodes), np.int64)
        success = np.full((trials, episodes), np.nan)
        ep = np.zeros(trials, np.int64)  # the episode each trial is in; `episodes` once it is over
        rows = np.arange(trials)
        steps, t0 = 0, time.perf_counter()
        while (ep < episodes).any():
            action, state = agent.act(obs_tensor(obs, device), state)  # Dict/Tuple: {leaf: (n, ...)}
            obs, rew, term, trunc, info = envs.step(action.cpu().numpy())
            live = ep < episodes
            e = np.minimum(ep, episodes - 1)
            returns[rows, e] += np.where(live, rew, 0.0)
            lengths[rows, e] += live
            steps += int(live.sum())
            done = term | trunc
            final = info.get("final_info", {})
            if "success" in final:  # the info of an episode's last step (same-step autoreset)
                ended = done & live & final.get("_success", np.ones(trials, bool))
                success[rows[ended], e[ended]] = final["success"][ended]
            ep += done & live
            state = agent.observe(state, torch.as_tensor(rew, dtype=torch.float32, device=device),
                                  torch.as_tensor(done, device=device))
        rate = steps / (time.perf_counter() - t0)
    finally:
        envs.close()
        if was_training:
            agent.train()
    normalized = None if ref_scores is None else normalized_score(returns, ref_scores)
    reported = not np.isnan(success).all()
    return EvalResult(returns, lengths, rate, normalized, success if reported else None)
