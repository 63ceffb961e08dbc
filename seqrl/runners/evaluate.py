"""Evaluation: N episodes at once in a Gymnasium vector env, one batched policy call per step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import seqrl.envs  # noqa: F401  registers the seqrl/... env ids for gym.make
from seqrl.data.store import check_spaces
from seqrl.errors import DataError


def normalized_score(returns: np.ndarray, ref_scores: tuple[float, float]) -> np.ndarray:
    """D4RL normalised score: 0 at the random reference return, 100 at the expert's."""
    lo, hi = ref_scores
    if hi == lo:
        raise DataError(f"reference scores {ref_scores} are equal: cannot normalise")
    return 100.0 * (np.asarray(returns, np.float64) - lo) / (hi - lo)


@dataclass
class EvalResult:
    returns: np.ndarray  # (N,) undiscounted episode returns
    lengths: np.ndarray  # (N,)
    env_steps_per_s: float
    normalized: np.ndarray | None = None  # (N,) D4RL normalised scores, when reference scores are known
    success: np.ndarray | None = None  # (N,) info["success"] at each episode's end, when the env reports it

    def summary(self) -> dict[str, float]:
        out = {"return_mean": float(self.returns.mean()), "return_std": float(self.returns.std()),
               "length_mean": float(self.lengths.mean()), "env_steps_per_s": self.env_steps_per_s}
        if self.normalized is not None:
            out |= {"score_mean": float(self.normalized.mean()), "score_std": float(self.normalized.std())}
        if self.success is not None:
            out["success_rate"] = float(self.success.mean())
        return out


class RandomPolicy:
    """Uniform random actions: the 0 of the normalised score."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.action_space = action_space
        self.action_space.seed(seed)

    def eval_conditions(self):
        return [("", {})]

    def initial_state(self, n_envs: int, device: Any) -> int:
        return n_envs

    def act(self, obs: torch.Tensor, state: int):
        return torch.as_tensor(np.stack([self.action_space.sample() for _ in range(state)])), state

    def observe(self, state: int, reward: torch.Tensor, done: torch.Tensor) -> int:
        return state


@torch.no_grad()
def evaluate(policy: Any, env_id: str, episodes: int, seed: int = 0, device: str | torch.device = "cpu",
             condition: dict[str, Any] | None = None, ref_scores: tuple[float, float] | None = None,
             max_episode_steps: int | None = None, env_kwargs: dict[str, Any] | None = None) -> EvalResult:
    """Run `episodes` episodes of `env_id` together and return their returns.

    Env i is seeded with `seed + i`, so two policies evaluated with the same seed face the same starts.
    `condition` goes to `policy.initial_state` (DT: `target_return`); `env_kwargs` to the env's constructor.
    """
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    kwargs |= env_kwargs or {}
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync", **kwargs)
    spec = getattr(policy, "spec", None)
    if spec is not None:
        try:
            check_spaces(spec.observation_space, spec.action_space, envs, "the policy")
        except DataError:
            envs.close()
            raise
    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        obs, _ = envs.reset(seed=seed)
        state = policy.initial_state(episodes, device, **(condition or {}))
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, np.int64)
        finished = np.zeros(episodes, bool)
        success = np.full(episodes, np.nan)
        steps, t0 = 0, time.perf_counter()
        while not finished.all():
            action, state = policy.act(torch.as_tensor(obs, device=device), state)
            obs, rew, term, trunc, info = envs.step(action.cpu().numpy())
            returns += np.where(finished, 0.0, rew)
            lengths += ~finished
            steps += int((~finished).sum())
            done = term | trunc
            if "success" in info:  # the info of a finished episode's last step (autoreset comes next step)
                ended = done & ~finished & info.get("_success", np.ones(episodes, bool))
                success[ended] = info["success"][ended]
            finished |= done
            state = policy.observe(state, torch.as_tensor(rew, dtype=torch.float32, device=device),
                                   torch.as_tensor(done, device=device))
        rate = steps / (time.perf_counter() - t0)
    finally:
        envs.close()
        if was_training:
            policy.train()
    normalized = None if ref_scores is None else normalized_score(returns, ref_scores)
    reported = ~np.isnan(success)
    return EvalResult(returns, lengths, rate, normalized, success[reported] if reported.any() else None)
