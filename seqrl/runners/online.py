"""OnlineRunner: recurrent PPO for any actor-critic with a memory (GTrXL, LSTM; an SSM later).

Dimension letters: n envs, T steps per env per rollout (`n_steps`), L steps per sequence (`seq_len`),
C = T / L sequences per env per rollout, S = C * n sequences per rollout.

The loop, top to bottom (CleanRL's recurrent PPO, Huang et al. 2022, with the memory kept in the
backbone's state):

1. collect: a Gymnasium vector env steps n envs for T steps; the policy's recurrent state is carried
   from step to step and from one rollout to the next, and cleared per env at episode ends
   (`policy.observe`). Before every L-th step the state is recorded: the memory each sequence starts
   from. Truncated episodes (time limits) are bootstrapped with the value of their final observation.
2. GAE(lambda) advantages and returns over the rollout (`gae`).
3. PPO epochs over minibatches of whole sequences: `policy.evaluate_actions` re-runs each sequence
   from its recorded memory (truncated BPTT: gradients flow inside a sequence, not into the memory),
   and `ppo_loss` gives the clipped surrogate, the clipped value loss and the entropy bonus, with
   advantages normalised per minibatch; gradient-norm clipping, Adam.

Data ownership. Finished episodes go into the ReplayStore (online append, one `extend` per rollout):
it is the one owner of trajectory data, what episode returns and lengths are logged from, and what a
later offline agent could train on. The PPO update does not sample from it: it needs, per step, things
that are not trajectory data (log-probabilities and values under the collecting policy, the memory at
each sequence start) and rollouts that cut across episodes, and it runs on the whole rollout once,
in collection order. So the rollout lives in (T, n) tensors on the training device, written in place
while collecting and dropped after the update; copying it through the store's padded windows would
only add a gather and a device round trip per update.

The runner knows only the contract of `seqrl.policies.gtrxl.ActorCritic` (`explore`, `value`,
`evaluate_actions`, `initial_state`, `observe`) and that every tensor of a policy state is batch-first
(envs on dim 0): that is how it records, stacks and slices states (`stack_states`, `index_state`).

Resume restores weights, optimiser, step and update counters and the torch RNG. It cannot restore
the envs mid-episode: a resumed run starts fresh episodes (seeded by the update count) with a fresh
memory, so it matches an uninterrupted run in everything but the episodes in flight at the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from seqrl.checkpoint import load_checkpoint, restore_rng, save_checkpoint, training_state
from seqrl.data.store import ReplayStore, check_spaces
from seqrl.errors import CheckpointError, DataError, PresetError
from seqrl.io import atomic_write_json
from seqrl.presets import AgentPreset, OnlineRunnerConfig, training_device
from seqrl.runners.evaluate import evaluate


# ------------------------------------------------------------------------------------ PPO math
def gae(rew: torch.Tensor, value: torch.Tensor, done: torch.Tensor, last_value: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    rew, value (T, n); done (T, n) bool: the episode ended at that step (nothing is bootstrapped across
    it; fold a truncated episode's bootstrap into its last reward); last_value (n,): the value of the
    observation after the rollout. Returns advantages and returns (advantages + values), (T, n)."""
    adv = torch.zeros_like(rew)
    running = torch.zeros_like(last_value)
    for t in range(rew.shape[0] - 1, -1, -1):
        next_value = last_value if t == rew.shape[0] - 1 else value[t + 1]
        live = (~done[t]).to(rew.dtype)
        delta = rew[t] + gamma * next_value * live - value[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + value


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, value: torch.Tensor,
             old_value: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor, clip_coef: float,
             vf_clip: float, ent_coef: float, vf_coef: float, norm_adv: bool = True) -> dict[str, torch.Tensor]:
    """PPO's clipped objective (Schulman et al. 2017, arXiv:1707.06347) on tensors of one shape.

    Returns the `loss_*` terms the runner sums (policy, weighted value, weighted negative entropy)
    and diagnostics: the unweighted value loss, entropy, approximate KL ((r - 1) - log r, Schulman's
    low-variance estimator) and the fraction of clipped ratios."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    loss_pi = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if vf_clip > 0:  # the new value may move at most vf_clip from the collection-time value, or pay the larger error
        clipped = old_value + (value - old_value).clamp(-vf_clip, vf_clip)
        v_loss = 0.5 * torch.max((value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((value - returns) ** 2).mean()
    ent = entropy.mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_coef).float().mean()
    return {"loss_policy": loss_pi, "loss_value": vf_coef * v_loss, "loss_entropy": -ent_coef * ent,
            "value_loss": v_loss.detach(), "entropy": ent.detach(), "approx_kl": approx_kl,
            "clip_fraction": clip_fraction}


# ---------------------------------------------------------------------------- policy states
def index_state(state: Any, idx: torch.Tensor) -> Any:
    """Select rows (envs or sequences) of every tensor in a batch-first state."""
    if isinstance(state, torch.Tensor):
        return state[idx]
    if isinstance(state, tuple):
        return tuple(index_state(s, idx) for s in state)
    if dataclasses.is_dataclass(state):
        return type(state)(**{f.name: index_state(getattr(state, f.name), idx) for f in dataclasses.fields(state)})
    raise TypeError(f"policy state holds a {type(state).__name__}: states must be tensors, tuples or dataclasses")


def stack_states(states: list[Any]) -> Any:
    """C states of n envs -> one state of C*n rows, row c*n + e = state c of env e."""
    s0 = states[0]
    if isinstance(s0, torch.Tensor):
        return torch.cat(states, 0)
    if isinstance(s0, tuple):
        return tuple(stack_states(list(parts)) for parts in zip(*states))
    if dataclasses.is_dataclass(s0):
        return type(s0)(**{f.name: stack_states([getattr(s, f.name) for s in states]) for f in dataclasses.fields(s0)})
    raise TypeError(f"policy state holds a {type(s0).__name__}: states must be tensors, tuples or dataclasses")


def _sequences(x: torch.Tensor, L: int) -> torch.Tensor:
    """(T, n, ...) -> (C*n, L, ...), sequence c*n + e = steps c*L .. c*L+L-1 of env e."""
    T, n = x.shape[:2]
    return x.view(T // L, L, n, *x.shape[2:]).transpose(1, 2).reshape(T // L * n, L, *x.shape[2:])


@dataclasses.dataclass
class Rollout:
    obs: torch.Tensor  # (T, n, *obs_shape)
    act: torch.Tensor  # (T, n) int64 or (T, n, A) float32, as sampled (Box: before clipping to the bounds)
    logp: torch.Tensor  # (T, n)
    value: torch.Tensor  # (T, n)
    rew: torch.Tensor  # (T, n), a truncated episode's bootstrap folded in
    done: torch.Tensor  # (T, n) bool: the episode ended at this step
    first: torch.Tensor  # (T, n) bool: an episode started at this step
    starts: list[Any]  # C states: the memory before steps 0, L, 2L, ...
    last_value: torch.Tensor  # (n,)


# ------------------------------------------------------------------------------------- runner
class OnlineRunner:
    def __init__(self, policy: nn.Module, preset: AgentPreset, run_dir: str | Path, resume: bool = False,
                 store: ReplayStore | None = None):
        cfg = preset.runner
        if not isinstance(cfg, OnlineRunnerConfig):
            raise PresetError(f"agent {preset.agent!r} trains offline: use --dataset, not the online runner")
        self.cfg, self.preset, self.run_dir = cfg, preset, Path(run_dir)
        device = training_device(cfg.device)
        self.device = device
        self.policy = policy.to(device)
        env = policy.spec.env
        self.envs = gym.make_vec(env.env_id, num_envs=cfg.n_envs, vectorization_mode="sync",
                                 vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                                 max_episode_steps=env.max_episode_steps, **env.env_kwargs)
        try:
            check_spaces(policy.spec.observation_space, policy.spec.action_space, self.envs, "the policy")
        except DataError:
            self.envs.close()
            raise
        act_space = self.envs.single_action_space
        self.clip = (act_space.low, act_space.high) if isinstance(act_space, gym.spaces.Box) else None
        self.store = store if store is not None else ReplayStore(
            self.envs.single_observation_space, act_space, meta={"env_id": env.env_id, "online": True})
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)  # eps: CleanRL's PPO
        self.batch = cfg.n_envs * cfg.n_steps  # env steps per update
        self.total_updates = math.ceil(cfg.total_steps / self.batch)
        self.updates = 0
        self.env_steps = 0
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        torch.manual_seed(cfg.seed)
        if resume:
            if not self.ckpt_path.exists():
                raise CheckpointError(f"nothing to resume: no checkpoint at {self.ckpt_path}")
            self._restore(load_checkpoint(self.ckpt_path, preset.agent))
        # the carried collection state: observations, memory, episodes in flight
        obs, _ = self.envs.reset(seed=cfg.seed + 1_000 * self.updates)
        self.obs = obs
        self.first = np.ones(cfg.n_envs, bool)
        self.state = self.policy.initial_state(cfg.n_envs, device)
        self._ep: list[dict[str, list]] = [{"obs": [], "act": [], "rew": []} for _ in range(cfg.n_envs)]
        self._finished: list[dict[str, Any]] = []
        self._successes: list[float] = []
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", preset.to_dict() | {"env": dataclasses.asdict(env),
                                                                      "run": {"device": str(device)}})
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.env_steps or None)

    # ---------------------------------------------------------------------------------- collect
    @torch.no_grad()
    def collect(self) -> Rollout:
        cfg, dev, policy = self.cfg, self.device, self.policy
        T, n = cfg.n_steps, cfg.n_envs
        obs_t = torch.as_tensor(self.obs, device=dev)
        buf = {k: torch.zeros(T, n, device=dev) for k in ("logp", "value", "rew")}
        obs_buf = torch.zeros(T, *obs_t.shape, dtype=obs_t.dtype, device=dev)
        done_buf = torch.zeros(T, n, dtype=torch.bool, device=dev)
        first_buf = torch.zeros(T, n, dtype=torch.bool, device=dev)
        act_buf, starts = None, []
        policy.eval()  # the policies have no dropout; eval() documents that collection takes no gradient
        for t in range(T):
            if t % cfg.seq_len == 0:
                starts.append(self.state)  # states are never modified in place: keeping the reference is enough
            action, logp, value, self.state = policy.explore(obs_t, self.state)
            if act_buf is None:
                act_buf = torch.zeros(T, *action.shape, dtype=action.dtype, device=dev)
            a = action.cpu().numpy()
            next_obs, rew, term, trunc, info = self.envs.step(np.clip(a, *self.clip) if self.clip else a)
            done = term | trunc
            raw = rew = rew.astype(np.float32)
            cut = trunc & ~term
            if cut.any() and cfg.gamma > 0:  # a time limit, not an end: bootstrap from the final observation
                final = np.array(next_obs)
                for i in np.flatnonzero(cut):
                    final[i] = info["final_obs"][i]
                v_final = policy.value(torch.as_tensor(final, device=dev), self.state).cpu().numpy()
                rew = rew + cfg.gamma * np.where(cut, v_final, 0.0).astype(np.float32)
            obs_buf[t], act_buf[t], buf["logp"][t], buf["value"][t] = obs_t, action, logp, value
            buf["rew"][t] = torch.as_tensor(rew, device=dev)
            done_buf[t] = torch.as_tensor(done, device=dev)
            first_buf[t] = torch.as_tensor(self.first, device=dev)
            self._record(self.obs, a, raw, term, done, info)
            self.state = policy.observe(self.state, buf["rew"][t], done_buf[t])
            self.first = done
            self.obs = next_obs
            obs_t = torch.as_tensor(next_obs, device=dev)
        last_value = policy.value(obs_t, self.state)
        self.env_steps += T * n
        return Rollout(obs_buf, act_buf, buf["logp"], buf["value"], buf["rew"], done_buf, first_buf, starts, last_value)

    def _record(self, obs: np.ndarray, action: np.ndarray, rew: np.ndarray, term: np.ndarray, done: np.ndarray,
                info: dict) -> None:
        """Keep each env's episode in flight; finished ones go to the store after the rollout."""
        for i, ep in enumerate(self._ep):
            ep["obs"].append(obs[i])
            ep["act"].append(action[i])
            ep["rew"].append(rew[i])
        final_info = info.get("final_info", {})
        for i in np.flatnonzero(done):
            ep = self._ep[i]
            end = np.zeros(len(ep["rew"]), bool)
            end[-1] = True
            self._finished.append({"obs": np.stack([*ep["obs"], info["final_obs"][i]]), "act": np.stack(ep["act"]),
                                   "rew": np.asarray(ep["rew"], np.float32), "term": end & term[i],
                                   "trunc": end & ~term[i]})
            if "success" in final_info and final_info.get("_success", np.ones(len(done), bool))[i]:
                self._successes.append(float(final_info["success"][i]))
            self._ep[i] = {"obs": [], "act": [], "rew": []}

    # ----------------------------------------------------------------------------------- update
    def update(self, ro: Rollout) -> dict[str, float]:
        cfg, policy = self.cfg, self.policy
        adv, ret = gae(ro.rew, ro.value, ro.done, ro.last_value, cfg.gamma, cfg.gae_lambda)
        L = cfg.seq_len
        obs, act, first = _sequences(ro.obs, L), _sequences(ro.act, L), _sequences(ro.first, L)
        old_logp, old_value = _sequences(ro.logp, L), _sequences(ro.value, L)
        adv, ret = _sequences(adv, L), _sequences(ret, L)
        state0 = stack_states(ro.starts)  # (S, ...) the memory each sequence starts from
        S = obs.shape[0]
        mb = S // cfg.minibatches
        if cfg.anneal_lr:
            for g in self.opt.param_groups:
                g["lr"] = cfg.lr * max(1.0 - self.updates / self.total_updates, 0.0)
        policy.train()
        logs: dict[str, list[float]] = {}
        for _ in range(cfg.epochs):
            perm = torch.randperm(S, device=self.device)
            for k in range(cfg.minibatches):
                idx = perm[k * mb : (k + 1) * mb]
                logp, entropy, value = policy.evaluate_actions(obs[idx], act[idx], first[idx], index_state(state0, idx))
                terms = ppo_loss(logp, old_logp[idx], adv[idx], value, old_value[idx], ret[idx], entropy,
                                 cfg.clip_coef, cfg.vf_clip, cfg.ent_coef, cfg.vf_coef, cfg.norm_adv)
                loss = sum(v for key, v in terms.items() if key.startswith("loss_"))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:
                    terms["grad_norm"] = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.opt.step()
                terms["loss"] = loss
                for key, v in terms.items():
                    logs.setdefault(key, []).append(float(v.detach()))
            if cfg.target_kl and np.mean(logs["approx_kl"][-cfg.minibatches:]) > cfg.target_kl:
                break
        self.updates += 1
        out = {k: float(np.mean(v)) for k, v in logs.items()}
        var = float(torch.var(ret))
        out["explained_variance"] = float("nan") if var == 0 else 1 - float(torch.var(ret - old_value)) / var
        return out

    # -------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        bar = tqdm(total=cfg.total_steps, initial=min(self.env_steps, cfg.total_steps), desc=f"train {self.preset.agent}",
                   unit="step", dynamic_ncols=True)
        t_start, steps_start = time.perf_counter(), self.env_steps
        while self.env_steps < cfg.total_steps:
            t0 = time.perf_counter()
            ro = self.collect()
            stats = self.update(ro)
            rate = self.batch / (time.perf_counter() - t0)
            n_new = len(self._finished)
            if self._finished:
                self.store.extend(self._finished)  # the store owns the finished episodes
                self._finished = []
            if self.updates % cfg.log_every == 0:
                self._log(stats, rate, n_new)
            bar.update(min(self.batch, cfg.total_steps - bar.n))
            if self.store.num_episodes:
                bar.set_postfix(ret=f"{self.store.episode_returns[-100:].mean():.2f}")
            if cfg.eval_every and self.updates % cfg.eval_every == 0 and self.env_steps < cfg.total_steps:
                self.evaluate()
            if cfg.checkpoint_every and self.updates % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        self.train_rate = (self.env_steps - steps_start) / max(time.perf_counter() - t_start, 1e-9)
        results = self.evaluate()
        self.save()
        self.writer.close()
        self.envs.close()
        return results

    def _log(self, stats: dict[str, float], rate: float, n_new: int) -> None:
        w, step = self.writer, self.env_steps
        for k, v in stats.items():
            w.add_scalar(f"losses/{k}", v, step)
        w.add_scalar("charts/env_steps_per_s", rate, step)
        w.add_scalar("charts/lr", self.opt.param_groups[0]["lr"], step)
        if n_new:
            w.add_scalar("charts/episode_return", float(self.store.episode_returns[-n_new:].mean()), step)
            w.add_scalar("charts/episode_length", float(self.store.episode_lengths[-n_new:].mean()), step)
        if self._successes:
            w.add_scalar("charts/success_rate", float(np.mean(self._successes)), step)
            self._successes = []

    def evaluate(self) -> dict[str, Any]:
        """Deterministic actions over `eval_episodes` episodes. Returns {"": summary}, like OfflineRunner."""
        if self.cfg.eval_episodes <= 0:
            return {}
        env = self.policy.spec.env
        res = evaluate(self.policy, env.env_id, self.cfg.eval_episodes, seed=self.cfg.seed + 10_000,
                       device=self.device, ref_scores=self.policy.spec.ref_scores,
                       max_episode_steps=env.max_episode_steps, env_kwargs=env.env_kwargs)
        s = res.summary()
        for k, v in s.items():
            self.writer.add_scalar(f"eval/{k}", v, self.env_steps)
        atomic_write_json(self.run_dir / "eval.json", {"env_steps": self.env_steps, "updates": self.updates, "": s})
        return {"": s}

    # ------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        save_checkpoint(self.ckpt_path, training_state(
            self.preset, self.policy, self.opt, self.device, step=self.env_steps, updates=self.updates,
            store={"episodes": self.store.num_episodes, "steps": len(self.store)}))

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.policy.load_state_dict(ckpt["policy"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.env_steps = int(ckpt["step"])
        self.updates = int(ckpt.get("updates", self.env_steps // self.batch))
        restore_rng(ckpt, self.device)
