"""Experience sources of the Trainer: where an agent's batches come from.

Dimension letters: n envs, T steps per env per collection (`n_steps`), B batch.

A source is picked by the agent preset's `source.kind` and has one small interface:

- ``start(agent, device, seed, rank, world) -> torch.Generator``: get ready; returns the generator
  samples are drawn with (the trainer checkpoints it).
- ``iteration(agent, generator)``: a generator of batches, one optimiser update each. It may read back
  each update's scalars (``scalars = yield batch``).
- ``draw(agent, generator)`` and ``graphable``: one batch drawn inside a CUDA graph (dataset sources).
- ``fixed_batches``: every batch has the same shapes, so the trainer may replay a CUDA graph of the update on
  each, copied in (a replaying env source).
- ``done()``, ``progress()`` (share of its own budget, for learning-rate decay), ``global_step(updates)``
  (the TensorBoard x axis), ``scalars()`` (what it logs), ``state_dict()``/``load_state_dict()``, ``close()``.
- ``save(run_dir)``/``restore(run_dir)``: what a checkpoint holds beside the weights (a replaying env
  source's store, `replay.npz`), written before the checkpoint and read back on resume.

`DatasetSource` (offline): a fixed ReplayStore; each iteration is one `agent.sample(store, ...)`.
`EnvSource` (online): a Gymnasium vector env stepped by `agent.explore` (`agent.bootstrap` reports on the observations
it does not act on: the final one of a truncated episode, the one after the rollout); each iteration collects T steps of
n envs into a `Rollout`, puts the steps into the ReplayStore (which keeps the last `capacity` steps, one stream per env;
an unfinished episode as pieces, see `seqrl.data.store`), and yields what `agent.rollout_batches(rollout)` makes of it
(PPO: epochs of minibatches of whole sequences); an agent with `replay = True` (world-model agents) is instead sampled
from the store, `train_ratio` replayed steps per env step once `learning_starts` steps are stored.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
import torch

import seqrl.envs  # noqa: F401  registers the seqrl/... env ids
from seqrl.data.store import ReplayStore, check_spaces, flatten_obs, obs_tensor, tree_map
from seqrl.errors import CheckpointError, DataError, PresetError
from seqrl.presets import DatasetSourceConfig, EnvPreset, EnvSourceConfig


# -------------------------------------------------------------------------------------- dataset
class DatasetSource:
    def __init__(self, cfg: DatasetSourceConfig, store: ReplayStore):
        self.cfg, self.store = cfg, store

    def start(self, agent: Any, device: torch.device, seed: int, rank: int, world: int) -> torch.Generator:
        if self.cfg.batch_size % world:
            raise PresetError(f"source.batch_size {self.cfg.batch_size} is not divisible by {world} DDP ranks")
        self.device, self.batch_size = device, self.cfg.batch_size // world
        if self.cfg.store_on_device:
            self.store.to(device)
        self.graphable = device.type == "cuda" and self.cfg.store_on_device
        self.fixed_batches = False  # graphable instead, or the store on the host: eager
        gen = torch.Generator(device=device if self.cfg.store_on_device else "cpu")
        gen.manual_seed(seed * 1_000_003 + rank)
        return gen

    def draw(self, agent: Any, generator: torch.Generator | None) -> Any:
        return agent.sample(self.store, self.batch_size, generator).to(self.device)

    def iteration(self, agent: Any, generator: torch.Generator) -> Iterator[Any]:
        yield self.draw(agent, generator)

    def done(self) -> bool:
        return False  # the trainer's `steps` is the budget

    def progress(self) -> float:
        return 0.0

    def global_step(self, updates: int) -> int:
        return updates

    def scalars(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def save(self, run_dir: Path) -> None:
        pass

    def restore(self, run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ env
@dataclasses.dataclass
class Rollout:
    """T steps of n envs, in collection order, on the training device."""

    obs: Any  # (T, n, *obs_shape) the observation each action was chosen on ({leaf: (T, n, ...)} for Dict/Tuple)
    act: torch.Tensor  # (T, n[, A]) the agent's actions in its own units (PPO: the unclipped Gaussian sample)
    rew: torch.Tensor  # (T, n) float32
    term: torch.Tensor  # (T, n) bool: the episode terminated at this step
    trunc: torch.Tensor  # (T, n) bool: the episode was cut at this step (time limit), not terminated
    first: torch.Tensor  # (T, n) bool: an episode started at this step
    extras: dict[str, torch.Tensor]  # (T, n) each: what `explore` reported per step (PPO: logp, value)
    final_extras: dict[str, torch.Tensor]  # (T, n): `bootstrap` at the final observation of truncated episodes
    # (zero elsewhere)
    last_extras: dict[str, torch.Tensor]  # (n,): `bootstrap` at the observation after the rollout
    starts: list[Any]  # the agent's state before steps 0, L, 2L, ... (L = agent.segment)


class _RolloutWriter:
    """The `Rollout` of one collection, written step by step (action and extras buffers at the first step)."""

    def __init__(self, T: int, n: int, obs_t: Any, segment: int | None, device: torch.device):
        self.T, self.n, self.segment, self.dev = T, n, segment, device
        self.obs = tree_map(lambda o: torch.zeros(T, *o.shape, dtype=o.dtype, device=device), obs_t)
        self.flags = {k: torch.zeros(T, n, dtype=torch.bool, device=device) for k in ("term", "trunc", "first")}
        self.rew = torch.zeros(T, n, device=device)
        self.act, self.extras, self.final_extras, self.starts = None, {}, {}, []

    def state_before(self, t: int, state: Any) -> None:
        if self.segment and t % self.segment == 0:
            self.starts.append(state)  # states are never modified in place: keeping the reference is enough

    def add(self, t: int, obs_t: Any, action: torch.Tensor, rew_t: torch.Tensor, extras: dict[str, torch.Tensor],
            term: np.ndarray, cut: np.ndarray, first: np.ndarray) -> None:
        if self.act is None:
            self.act = torch.zeros(self.T, *action.shape, dtype=action.dtype, device=self.dev)
            self.extras = {k: torch.zeros(self.T, self.n, device=self.dev) for k in extras}
            self.final_extras = {k: torch.zeros(self.T, self.n, device=self.dev) for k in extras}
        tree_map(lambda buf, o: buf[t].copy_(o), self.obs, obs_t)
        self.act[t], self.rew[t] = action, rew_t
        for k, v in extras.items():
            self.extras[k][t] = v
        for k, v in (("term", term), ("trunc", cut), ("first", first)):
            self.flags[k][t] = torch.as_tensor(v, device=self.dev)

    def final(self, t: int, cut: np.ndarray, bootstrap: dict[str, torch.Tensor]) -> None:
        """What the agent reported at the final observations of the episodes cut at step t (zero elsewhere)."""
        mask = torch.as_tensor(cut, device=self.dev)
        for k, v in bootstrap.items():
            self.final_extras[k][t] = torch.where(mask, v.float(), 0.0)

    def rollout(self, last_extras: dict[str, torch.Tensor]) -> Rollout:
        f = self.flags
        return Rollout(self.obs, self.act, self.rew, f["term"], f["trunc"], f["first"], self.extras, self.final_extras,
                       last_extras, self.starts)


def _fresh_episode(t0: int = 0, ret: float = 0.0) -> dict[str, Any]:
    """An env's steps not yet in the store, from step t0 of its episode, and the episode's return so far."""
    return {"obs": [], "act": [], "rew": [], "t0": t0, "return": ret}


def _fresh_log() -> dict[str, Any]:
    """What the env source logs, gathered since the last `scalars()`."""
    return {"returns": [], "lengths": [], "success": [], "steps": 0, "t0": time.perf_counter()}


class EnvSource:
    def __init__(self, cfg: EnvSourceConfig, env: EnvPreset):
        self.cfg, self.env = cfg, env
        self.env_steps = 0
        self.collections = 0
        self.credit = 0.0  # replay: steps owed to the train ratio
        self.envs = None

    def start(self, agent: Any, device: torch.device, seed: int, rank: int, world: int) -> torch.Generator:
        if world > 1:
            raise PresetError("env sources run in one process; launch without torchrun")
        cfg, env = self.cfg, self.env
        self.device, self.seed = device, seed
        self.envs = gym.make_vec(env.env_id, num_envs=cfg.n_envs, vectorization_mode="sync",
                                 vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                                 max_episode_steps=env.max_episode_steps, **env.env_kwargs)
        try:
            check_spaces(agent.spec.observation_space, agent.spec.action_space, self.envs, "the agent")
        except DataError:
            self.envs.close()
            raise
        self.store = ReplayStore(self.envs.single_observation_space, self.envs.single_action_space,
                                 meta={"env_id": env.env_id, "online": True}, capacity=cfg.capacity)
        self.replay = agent.replay
        self.graphable = False
        self.fixed_batches = self.replay  # sequences of one length, `batch_size` of them (PPO's minibatches vary)
        self.obs = None  # the envs start their episodes at the first collection, seeded by the count restored by then
        gen = torch.Generator()
        gen.manual_seed(seed * 1_000_003)
        return gen

    def _new_episodes(self, agent: Any) -> None:
        """Reset every env, seeded by the collections so far (a resumed run starts fresh episodes), and the
        agent's state."""
        n = self.cfg.n_envs
        self.obs, _ = self.envs.reset(seed=self.seed + 1_000 * self.collections)
        self.first = np.ones(n, bool)
        self.state = agent.initial_state(n, self.device)
        self._ep = [_fresh_episode() for _ in range(n)]
        self._log = _fresh_log()

    # ------------------------------------------------------------------------------- collecting
    @torch.no_grad()
    def collect(self, agent: Any) -> Rollout | None:
        """T steps of every env into the store; and, for an agent that learns from its rollouts (not `replay`),
        into the returned `Rollout` (None for a replaying agent)."""
        T, n, dev = self.cfg.n_steps, self.cfg.n_envs, self.device
        if self.obs is None:
            self._new_episodes(agent)
        obs_t = obs_tensor(self.obs, dev)  # (n, *obs_shape), or {leaf: (n, ...)}
        out = None if agent.replay else _RolloutWriter(T, n, obs_t, getattr(agent, "segment", None), dev)
        agent.eval()  # collection takes no gradient
        for t in range(T):
            if out is not None:
                out.state_before(t, self.state)
            action, env_action, ex, self.state = agent.explore(obs_t, self.state)
            a = env_action.cpu().numpy()
            next_obs, rew, term, trunc, info = self.envs.step(a)
            cut = trunc & ~term
            done = term | trunc
            self._record(self.obs, a, rew, term, done, info)
            rew_t = torch.as_tensor(rew, dtype=torch.float32, device=dev)
            if out is not None:
                out.add(t, obs_t, action, rew_t, ex, term, cut, self.first)
                if cut.any():  # a time limit, not an end: what the agent reports at the final observation
                    final = tree_map(np.array, flatten_obs(next_obs))  # a copy, {leaf: (n, ...)} for Dict/Tuple
                    for i in np.flatnonzero(cut):
                        tree_map(lambda f, o: f.__setitem__(i, o), final, flatten_obs(info["final_obs"][i]))
                    out.final(t, cut, agent.bootstrap(obs_tensor(final, dev), self.state))
            self.state = agent.observe(self.state, rew_t, torch.as_tensor(done, device=dev))
            self.first, self.obs = done, next_obs
            obs_t = obs_tensor(next_obs, dev)
        self._flush()
        self.env_steps += T * n
        self.collections += 1
        self._log["steps"] += T * n
        return None if out is None else out.rollout(agent.bootstrap(obs_t, self.state))

    def _record(self, obs: np.ndarray, action: np.ndarray, rew: np.ndarray, term: np.ndarray, done: np.ndarray,
                info: dict) -> None:
        """Keep each env's steps in flight; a finished episode's last piece goes to the store (stream = env
        index)."""
        obs = flatten_obs(obs)  # Dict/Tuple: {leaf: (n, ...)}, each env's row kept per leaf
        for i, ep in enumerate(self._ep):
            ep["obs"].append(tree_map(lambda o: o[i], obs))
            ep["act"].append(action[i])
            ep["rew"].append(rew[i])
            ep["return"] += float(rew[i])
        finished = []
        final_info = info.get("final_info", {})
        for i in np.flatnonzero(done):
            ep = self._ep[i]
            finished.append(self._piece(i, flatten_obs(info["final_obs"][i]), bool(term[i]), True))
            self._log["returns"].append(ep["return"])
            self._log["lengths"].append(ep["t0"] + len(ep["rew"]))
            if "success" in final_info and final_info.get("_success", np.ones(len(done), bool))[i]:
                self._log["success"].append(float(final_info["success"][i]))
        if finished:
            self.store.extend(finished)

    def _piece(self, i: int, final_obs: Any, term: bool, end: bool) -> dict[str, Any]:
        """Env i's steps in flight as a store episode (a piece of its episode from step t0; its last if `end`);
        what env i keeps in flight starts after them."""
        ep = self._ep[i]
        T = len(ep["rew"])
        last = np.zeros(T, bool)
        last[-1] = end
        piece = {"obs": [*ep["obs"], final_obs], "act": np.stack(ep["act"]), "rew": np.asarray(ep["rew"], np.float32),
                 "term": last & term, "trunc": last & (not term), "stream": i, "t0": ep["t0"]}
        self._ep[i] = _fresh_episode() if end else _fresh_episode(ep["t0"] + T, ep["return"])
        return piece

    def _flush(self) -> None:
        """Every env's steps in flight to the store as pieces of their unfinished episodes, so that replay sees
        steps within a collection of being taken, not only once their episode ends (DreamerV3 streams steps
        into its replay the same way); the next observation ends each piece and starts the next."""
        obs = flatten_obs(self.obs)
        pieces = [self._piece(i, tree_map(lambda o: o[i], obs), False, False) for i, ep in enumerate(self._ep)
                  if ep["rew"]]
        if pieces:
            self.store.extend(pieces)

    # -------------------------------------------------------------------------------- interface
    def iteration(self, agent: Any, generator: torch.Generator) -> Iterator[Any]:
        rollout = self.collect(agent)
        if not agent.replay:
            yield from agent.rollout_batches(rollout, generator)  # `yield from` passes the trainer's scalars through
            return
        cfg = self.cfg
        if len(self.store) < max(cfg.learning_starts, 1):
            return
        self.credit += cfg.train_ratio * cfg.n_steps * cfg.n_envs  # steps to replay
        while self.credit > 0:
            batch = agent.sample(self.store, cfg.batch_size, generator).to(self.device)
            self.credit -= batch.mask.numel()
            yield batch

    def done(self) -> bool:
        return self.env_steps >= self.cfg.env_steps

    def progress(self) -> float:
        return self.env_steps / self.cfg.env_steps

    def global_step(self, updates: int) -> int:
        return self.env_steps

    def scalars(self) -> dict[str, float]:
        """Finished episodes' mean return, length and success rate, and env steps/s, since the last call."""
        log, out = self._log, {}
        if log["returns"]:
            out |= {"episode_return": float(np.mean(log["returns"])), "episode_length": float(np.mean(log["lengths"]))}
        if log["success"]:
            out["success_rate"] = float(np.mean(log["success"]))
        out["env_steps_per_s"] = log["steps"] / max(time.perf_counter() - log["t0"], 1e-9)
        self._log = _fresh_log()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "collections": self.collections, "credit": self.credit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Counters only: the envs cannot be restored mid-episode, so a resumed run starts fresh episodes."""
        self.env_steps, self.collections = int(state["env_steps"]), int(state["collections"])
        self.credit = float(state.get("credit", 0.0))

    def save(self, run_dir: Path) -> None:
        """A replaying agent's store, as `replay.npz` (atomically; the checkpoint is written after it, so the
        replay on disk holds at least the episodes the checkpoint's weights saw)."""
        if self.replay and len(self.store):
            self.store.save(Path(run_dir) / "replay.npz")

    def restore(self, run_dir: Path) -> None:
        path = Path(run_dir) / "replay.npz"
        if not self.replay or self.env_steps == 0:
            return
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} is missing; the checkpoint of this replaying agent was "
                                  f"written beside its replay store")
        store = ReplayStore.load(path)
        check_spaces(store.observation_space, store.action_space, self.envs, f"the replay store {path}")
        self.store = store

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()


# ------------------------------------------------------------------------------- from the CLI
def resolve_env(name: str, overrides: dict) -> EnvPreset:
    """An env preset by name or path (envs/NAME.toml), else the preset of a Gymnasium id, else a bare
    preset for any registered Gymnasium id. `module:EnvId` (Gymnasium's form) imports the module first,
    which registers its envs: the name given on the command line is the only way seqrl imports a module
    for an env (a checkpoint's env id never does, see `checkpoint_env`)."""
    from seqrl.presets import ENVS_DIR, build, find_env_for_id, load_env, merge

    if name.endswith(".toml") or (ENVS_DIR / f"{name}.toml").is_file():
        return load_env(name, overrides)
    if ":" in name:
        module, name = name.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PresetError(f"--env {module}:{name}: cannot import module {module!r} ({e})") from e
        if name not in gym.registry:
            raise PresetError(f"--env {module}:{name}: importing {module!r} registered no env {name!r}")
    found = find_env_for_id(name)
    if found is not None:
        return build(EnvPreset, merge(dataclasses.asdict(found), overrides))
    if name in gym.registry:
        limit = gym.registry[name].max_episode_steps or 1000
        return build(EnvPreset, merge({"name": name, "env_id": name, "max_episode_steps": limit}, overrides))
    known = sorted(p.stem for p in ENVS_DIR.glob("*.toml"))
    raise PresetError(f"unknown env {name!r}: neither an env preset {known} nor a registered Gymnasium id")


def checkpoint_env(env_id: str, where: Any) -> None:
    """PresetError unless a checkpoint's env id can be made without importing anything: a `module:Id` id
    would make Gymnasium import that module, so a checkpoint could run code by naming one. The user
    names such an env on the command line instead (--env), and ids registered by a module must be."""
    if ":" in env_id:
        raise PresetError(f"{where} names env {env_id!r}, which would import module {env_id.split(':')[0]!r}; "
                          f"seqrl imports only modules named on the command line: pass --env {env_id} to allow it")
    if env_id not in gym.registry:
        raise PresetError(f"{where} names env {env_id!r}, which is not registered here: pass --env MODULE:{env_id} "
                          f"(the module that registers it) or --env with another id of the same spaces")


def _dataset_source(preset: Any, dataset: str | None, env: str | None, env_over: dict):
    from seqrl.data.minari_io import check_env_matches, dataset_recipe, load_store
    from seqrl.policies.base import TaskSpec
    from seqrl.presets import find_env_for_dataset

    if dataset is None:
        raise PresetError(f"agent {preset.agent!r} trains offline (source.kind = 'dataset'): pass --dataset "
                          f"(a Minari dataset id)")
    store = load_store(dataset)
    if env is None:
        found = find_env_for_dataset(dataset)
        if found is None:
            raise PresetError(f"no env preset owns dataset {dataset!r}: pass --env NAME (a file in envs/)")
        env = found.name
    env_preset = resolve_env(env, env_over)
    recorded = dataset_recipe(dataset) or {}
    if recorded.get("env_id") == env_preset.env_id and recorded.get("env_kwargs"):
        # the env as the data was recorded on it (`seqrl collect` keeps its kwargs); --set env.env_kwargs.* wins
        kw = env_preset.env_kwargs | recorded["env_kwargs"] | env_over.get("env_kwargs", {})
        env_preset = dataclasses.replace(env_preset, env_kwargs=kw)
    check_env_matches(store, env_preset.env_id, env_preset.env_kwargs)
    longest = int(store.episode_lengths.max())
    if longest > env_preset.max_episode_steps:
        raise PresetError(f"dataset {dataset!r} has episodes of {longest} steps, longer than env.max_episode_steps="
                          f"{env_preset.max_episode_steps} (the evaluation episodes' limit and the size of the "
                          f"timestep embedding): set env.max_episode_steps >= {longest}")
    spec = TaskSpec.from_store(store, env_preset)
    if {"ref_min_score", "ref_max_score"} & set(env_over):  # scores named on the command line win over the dataset's
        spec = dataclasses.replace(spec, meta=spec.meta | {"ref_min_score": env_preset.ref_min_score,
                                                           "ref_max_score": env_preset.ref_max_score})
    return DatasetSource(preset.source, store), spec, dataset.replace("/", "_")


def _env_source(preset: Any, dataset: str | None, env: str | None, env_over: dict):
    from seqrl.policies.base import TaskSpec

    if dataset is not None:
        raise PresetError(f"agent {preset.agent!r} trains online (source.kind = 'env'): pass --env, not --dataset")
    if env is None:
        raise PresetError(f"agent {preset.agent!r} trains online (source.kind = 'env'): pass --env (an env preset "
                          f"such as tmaze, or a Gymnasium id such as seqrl/TMaze-v0)")
    env_preset = resolve_env(env, env_over)
    return EnvSource(preset.source, env_preset), TaskSpec.from_env(env_preset), env_preset.env_id.replace("/", "_")


SOURCE_BUILDERS = {"dataset": _dataset_source, "env": _env_source}


def build_source(preset: Any, dataset: str | None, env: str | None, env_over: dict) -> tuple[Any, Any, str]:
    """The source the agent preset names, from the command line's --dataset / --env. Returns (source,
    TaskSpec, a name for the run folder)."""
    return SOURCE_BUILDERS[preset.source.kind](preset, dataset, env, env_over)
