"""D4RL-style datasets from a stable-baselines3 learner, with resumable training.

The recipe of Fu et al. 2020 (D4RL), for one env preset `env` (all budgets from `env.collect`):

- random: uniform random actions, `n_steps` transitions.
- expert: an SB3 `algo` agent (MlpPolicy, SB3 defaults, `train_envs` training envs; an off-policy learner
  takes one gradient step per env step collected) trained for `train_steps` env steps; its final policy
  rolled out for `n_steps` transitions. SAC is `seqrl.data.sac.GraphSAC`: SB3's SAC with its replay buffer
  and gradient step on the GPU (a CUDA graph), checkpoints that SB3's own `SAC.load` reads.
- medium: of the checkpoints saved every `checkpoint_every` steps, the one whose mean return over
  `checkpoint_eval_episodes` deterministic episodes is closest to `medium_fraction` x the final policy's;
  rolled out for `n_steps` transitions.
- medium-replay: every transition the learner collected up to and including the medium checkpoint's step,
  cut into episodes, complete ones only. D4RL took SAC's replay buffer; we record the transitions
  ourselves as training goes, so that PPO (which has no replay buffer) works too.

Rollouts sample the policy's stochastic actions, as D4RL did; checkpoints are rated deterministically.

Everything lives in workdir/sb3/{env_id}_{algo}_seed{seed}_len{max_episode_steps}/, each file written
atomically (temp name, then os.replace):
  chunk_{step}.npz   transitions collected since the previous checkpoint (for medium-replay, and to refill
                     an off-policy learner's replay buffer on resume)
  model_{step}.zip   the SB3 model after `step` env steps; written last, it marks a complete checkpoint
  evals.json         {step: mean deterministic return}, a cache
A new call after an interruption resumes from the newest readable model (`reset_num_timesteps=False`) and
deletes whatever was written after it; an off-policy learner's replay buffer is refilled from the chunks
(SB3's own buffer file holds all `buffer_size` rows however few are filled: 200 MB for 150 transitions).
A corrupt model zip is skipped with a warning.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from seqrl.data.collect import random_policy, rollout
from seqrl.data.sac import GraphSAC
from seqrl.errors import DataError, PresetError
from seqrl.io import atomic_write, atomic_write_json
from seqrl.presets import EnvPreset
from seqrl.progress import progress

QUALITIES = ("random", "medium", "expert", "medium-replay")
ALGOS: dict[str, type[BaseAlgorithm]] = {"SAC": GraphSAC, "TD3": TD3, "PPO": PPO}
Episode = dict[str, np.ndarray]


def sb3_episodes(env: EnvPreset, quality: str, seed: int, workdir: Path) -> list[Episode]:
    """Episodes of one D4RL quality: obs (T+1 rows), act (T, act_dim) float32, rew, term, trunc (T,)."""
    if quality not in QUALITIES:
        raise DataError(f"sb3 source: unknown quality {quality!r}; one of {list(QUALITIES)} "
                        "(medium-expert is concatenated by seqrl.data.collect.collect)")
    _check(env)
    c = env.collect
    roll = dict(n_steps=c.n_steps, n_envs=c.n_envs, seed=seed, desc=f"{env.name}/{quality}",
                max_episode_steps=env.max_episode_steps, env_kwargs=env.env_kwargs)
    if quality == "random":
        probe = gym.make(env.env_id, **env.env_kwargs)
        space = probe.action_space
        probe.close()
        return rollout(random_policy(space, seed, c.n_envs), env.env_id, **roll)
    run = train(env, seed, workdir)
    step = final_step(env, run) if quality == "expert" else medium_step(env, seed, run)
    if quality == "medium-replay":
        return replay_episodes(run, step)
    # On the CPU, with the rollout's seed (SB3 samples from torch's global generator): the checkpoint and seed
    # alone fix the dataset, whichever device trained the learner.
    model = ALGOS[c.algo].load(_checkpoints(run)[step], device="cpu")
    model.set_random_seed(seed)
    # D4RL rolled out the stochastic behaviour policy, not its mean action: deterministic=False.
    return rollout(lambda obs: model.predict(obs, deterministic=False)[0].astype(np.float32), env.env_id, **roll)


def train(env: EnvPreset, seed: int, workdir: Path) -> Path:
    """Train the learner to `collect.train_steps` env steps, resuming from the newest checkpoint; return its folder."""
    _check(env)
    c = env.collect
    run = run_folder(env, seed, workdir)
    ckpts = _checkpoints(run)
    start = max(ckpts, default=0)
    if start >= c.train_steps:
        return run
    _prune(run, after=start)
    venv = make_vec_env(env.env_id, n_envs=c.train_envs, seed=seed + start,
                        env_kwargs={**env.env_kwargs, "max_episode_steps": env.max_episode_steps})
    if start:
        model = ALGOS[c.algo].load(ckpts[start], env=venv)  # num_timesteps == start; the env is reset
        model.set_random_seed(seed + start)
        if isinstance(model, OffPolicyAlgorithm):
            _refill(model, run, start)
    else:
        off_policy = issubclass(ALGOS[c.algo], OffPolicyAlgorithm)
        model = ALGOS[c.algo]("MlpPolicy", venv, seed=seed, **({"gradient_steps": -1} if off_policy else {}))
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty folder in /tmp per run
    recorder = _Recorder(run, c.checkpoint_every, c.train_steps, desc=f"{env.name}: {c.algo} training")
    model.learn(c.train_steps - start, callback=recorder, reset_num_timesteps=False)
    recorder.checkpoint()  # the final policy
    venv.close()
    return run


def run_folder(env: EnvPreset, seed: int, workdir: Path) -> Path:
    """Where `train` keeps one learner's checkpoints, chunks and ratings."""
    return Path(workdir) / "sb3" / f"{env.env_id}_{env.collect.algo}_seed{seed}_len{env.max_episode_steps}"


def final_step(env: EnvPreset, run: Path) -> int:
    """Step of the expert: the first checkpoint at or past `train_steps` (PPO may overshoot by a rollout)."""
    done = [s for s in _checkpoints(run) if s >= env.collect.train_steps]
    if not done:
        raise DataError(f"{run}: no checkpoint at or past step {env.collect.train_steps}; training did not finish")
    return min(done)


def medium_step(env: EnvPreset, seed: int, run: Path) -> int:
    """Step of the checkpoint whose deterministic return is closest to `medium_fraction` x the final one's."""
    c = env.collect
    ckpts, final = _checkpoints(run), final_step(env, run)
    evals = _evals(run)
    for step in (s for s in ckpts if s <= final and s not in evals):
        model = ALGOS[c.algo].load(ckpts[step])
        policy = lambda obs: model.predict(obs, deterministic=True)[0].astype(np.float32)  # noqa: E731
        # one env, one episode per call: no bias towards short episodes
        evals[step] = float(np.mean([rollout(policy, env.env_id, 1, 1, seed + 10_000 + i, f"rate step {step}",
                                             env.max_episode_steps)[0]["rew"].sum()
                                     for i in range(c.checkpoint_eval_episodes)]))
        _write_evals(run, evals)
    target = c.medium_fraction * evals[final]
    return min((s for s in ckpts if s <= final), key=lambda s: (abs(evals[s] - target), s))


def replay_episodes(run: Path, upto: int) -> list[Episode]:
    """The learner's own complete episodes, from transitions recorded at env steps <= `upto`."""
    t = _transitions(run, upto)
    episodes = []
    for e in np.unique(t["env"]):
        rows = np.flatnonzero(t["env"] == e)
        for g in np.split(rows, np.flatnonzero(t["start"][rows])):  # an episode runs from one reset to the next
            if len(g) and t["start"][g[0]] and (t["term"][g[-1]] or t["trunc"][g[-1]]):
                episodes.append({"obs": np.concatenate([t["obs"][g[:1]], t["next_obs"][g]]), "act": t["act"][g],
                                 "rew": t["rew"][g], "term": t["term"][g], "trunc": t["trunc"][g]})
    if not episodes:
        raise DataError(f"{run}: no complete episode among the transitions up to step {upto}")
    return episodes


class _Recorder(BaseCallback):
    """Records every transition the learner collects, shows progress, and writes checkpoints."""

    def __init__(self, run: Path, every: int, total: int, desc: str):
        super().__init__()
        self.run, self.every, self.total, self.desc = run, every, total, desc

    def _on_training_start(self) -> None:
        self.rows: list[dict[str, np.ndarray]] = []
        self.start = np.ones(self.training_env.num_envs, bool)  # learn() begins with a reset
        self.next = (self.model.num_timesteps // self.every + 1) * self.every
        self.bar = progress(self.total, self.desc, unit="step", initial=self.model.num_timesteps)

    def _on_step(self) -> bool:
        loc = self.locals  # called after env.step, before SB3 stores the transition or moves _last_obs on
        dones, infos = np.array(loc["dones"], bool), loc["infos"]
        trunc = np.array([info.get("TimeLimit.truncated", False) for info in infos], bool)
        nxt = np.array(loc["new_obs"], copy=True)
        for i in np.flatnonzero(dones):
            nxt[i] = infos[i]["terminal_observation"]
        n = len(dones)
        self.rows.append({"obs": np.array(self.model._last_obs, copy=True), "next_obs": nxt,
                          "act": np.array(loc.get("clipped_actions", loc["actions"]), np.float32),  # as sent to the env
                          "rew": np.array(loc["rewards"], np.float64), "term": dones & ~trunc, "trunc": trunc,
                          "start": self.start, "env": np.arange(n), "step": np.full(n, self.model.num_timesteps)})
        self.start = dones
        self.bar.update(n)
        return True

    def _on_rollout_end(self) -> None:  # after the step's transition is in the replay buffer
        if self.next <= self.model.num_timesteps < self.total:
            self.checkpoint()

    def _on_training_end(self) -> None:
        self.bar.close()

    def checkpoint(self) -> None:
        step = self.model.num_timesteps
        if self.rows:
            chunk = {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]}
            atomic_write(self.run / f"chunk_{step}.npz", lambda f: np.savez(f, **chunk))
        atomic_write(self.run / f"model_{step}.zip", self.model.save)
        self.rows, self.next = [], (step // self.every + 1) * self.every


def _check(env: EnvPreset) -> None:
    c = env.collect
    if c.algo not in ALGOS:
        raise PresetError(f"env {env.name!r}: collect.algo {c.algo!r} is not one of {list(ALGOS)}")
    try:
        gym.spec(env.env_id)
    except gym.error.Error as e:
        raise PresetError(f"env {env.name!r}: {env.env_id!r} is not a registered Gymnasium env ({e})") from e


def _step(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _checkpoints(run: Path) -> dict[int, Path]:
    """Readable model zips by step, oldest first; a truncated or corrupt one is skipped with a warning."""
    out = {}
    for p in run.glob("model_*.zip"):
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            bad = e
        if bad is not None:
            warnings.warn(f"{p}: corrupt checkpoint ({bad}), skipped")
            continue
        out[_step(p)] = p
    return dict(sorted(out.items()))


def _prune(run: Path, after: int) -> None:
    """Delete what an interrupted run wrote after checkpoint `after`, so that training redoes it."""
    for p in [*run.glob("model_*.zip"), *run.glob("chunk_*.npz")]:
        if _step(p) > after:
            p.unlink()
    for p in run.glob(".*.tmp"):  # left by a process killed inside atomic_write
        p.unlink()
    evals = _evals(run)
    if any(s > after for s in evals):
        _write_evals(run, {s: r for s, r in evals.items() if s <= after})


def _evals(run: Path) -> dict[int, float]:
    path = run / "evals.json"
    return {int(s): float(r) for s, r in json.loads(path.read_text()).items()} if path.is_file() else {}


def _write_evals(run: Path, evals: dict[int, float]) -> None:
    atomic_write_json(run / "evals.json", {str(s): r for s, r in sorted(evals.items())})


def _transitions(run: Path, upto: int) -> dict[str, np.ndarray]:
    """All recorded transitions at env steps <= `upto`, in the order they were collected."""
    parts = []
    for p in sorted((p for p in run.glob("chunk_*.npz") if _step(p) <= upto), key=_step):
        with np.load(p) as z:
            parts.append({k: z[k] for k in z.files})
    if not parts:
        raise DataError(f"{run}: no recorded transitions up to step {upto}")
    t = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    keep = t["step"] <= upto
    return {k: v[keep] for k, v in t.items()}


def _refill(model: OffPolicyAlgorithm, run: Path, upto: int) -> None:
    """Rebuild the replay buffer from the recorded transitions, as SB3 would have stored them."""
    t, n = _transitions(run, upto), model.n_envs
    done = t["term"] | t["trunc"]
    for j in range(0, len(done), n):
        s = slice(j, j + n)
        model.replay_buffer.add(t["obs"][s], t["next_obs"][s], model.policy.scale_action(t["act"][s]), t["rew"][s],
                                done[s], [{"TimeLimit.truncated": bool(x)} for x in t["trunc"][s]])
