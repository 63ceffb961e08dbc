"""ReplayStore: the one owner of trajectory data, and its window samplers.

Dimension letters: N steps in the store, E episodes, B batch, K window length (steps).

Storage is columnar: one array per field over all steps, episodes laid end to end, and
``ep_start`` (E+1,) offsets marking where each episode begins. Returns-to-go, in-episode timesteps
and the episode of every step are derived once, vectorised, when episodes are added. Sampling works on
torch tensors (on CPU, or on the training device after `to(device)`) with one gather per column:

- `sample_windows(B, K)`: windows of K consecutive steps inside one episode, right-padded with a
  mask where the episode ends (DT, DM, BC).
- `sample_histories(B, K)`: windows that may run across consecutive episodes of one stream (a
  learning history or a task), with `first` marking episode starts (in-context RL).

Observations are Box (float32, any shape) or Discrete (int64); actions likewise.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import gymnasium as gym
import numpy as np
import torch

from seqrl.errors import DataError
from seqrl.io import atomic_write

FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ spaces
def space_to_dict(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "shape": list(space.shape)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    raise DataError(f"unsupported space {space}: seqrl handles Box and Discrete observations and actions")


def space_from_dict(d: Mapping[str, Any]) -> gym.Space:
    if d["type"] == "Box":
        return gym.spaces.Box(np.array(d["low"], np.float32), np.array(d["high"], np.float32), tuple(d["shape"]), np.float32)
    if d["type"] == "Discrete":
        return gym.spaces.Discrete(int(d["n"]))
    raise DataError(f"unsupported space {d}")


def same_space(a: gym.Space, b: gym.Space) -> bool:
    """Same kind and shape (Box bounds may differ by rounding between float32/float64 envs)."""
    if isinstance(a, gym.spaces.Discrete) and isinstance(b, gym.spaces.Discrete):
        return a.n == b.n
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape
    return False


def check_spaces(observation_space: gym.Space, action_space: gym.Space, env: gym.Env | gym.vector.VectorEnv,
                 what: str) -> None:
    """Raise DataError naming the space of `what` (a dataset, a policy) that `env` does not share."""
    env_obs = getattr(env, "single_observation_space", env.observation_space)
    env_act = getattr(env, "single_action_space", env.action_space)
    env_id = env.spec.id if env.spec else "the env"
    for name, ours, theirs in (("observation", observation_space, env_obs), ("action", action_space, env_act)):
        if not same_space(ours, theirs):
            raise DataError(f"{what}: {name} space {ours} does not match {env_id}'s {theirs}")


# ------------------------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """Padded windows, ready for the tokenizer. Padding positions hold zeros and mask False."""

    obs: torch.Tensor  # (B, K, *obs_shape) float32, or (B, K) int64 for Discrete
    act: torch.Tensor  # (B, K, act_dim) float32, or (B, K) int64 for Discrete
    rew: torch.Tensor  # (B, K) float32
    rtg: torch.Tensor  # (B, K) float32 undiscounted return-to-go, reward of this step included
    timestep: torch.Tensor  # (B, K) int64 index of the step inside its episode
    done: torch.Tensor  # (B, K) bool terminated (not truncated) at this step
    first: torch.Tensor  # (B, K) bool first step of an episode
    mask: torch.Tensor  # (B, K) bool real step (True) or padding (False)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def split(self, n: int, i: int) -> "Batch":
        """The i-th of n equal slices along the batch (DDP ranks)."""
        b = self.obs.shape[0] // n
        return Batch(**{f.name: getattr(self, f.name)[i * b : (i + 1) * b] for f in fields(self)})


def _check_finite(name: str, x: np.ndarray, where: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0]
        raise DataError(f"{where}: {name} holds NaN or inf (first at step {bad})")


# ------------------------------------------------------------------------------------------ store
class ReplayStore:
    """Columnar episodes with offsets. Build with `from_episodes`, `from_minari`, `load` or `add_episode`."""

    COLUMNS = ("obs", "act", "rew", "term", "trunc")

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, meta: Mapping[str, Any] | None = None):
        space_to_dict(observation_space), space_to_dict(action_space)  # raises on unsupported spaces
        self.observation_space = observation_space
        self.action_space = action_space
        self.meta: dict[str, Any] = dict(meta or {})
        obs_dtype = np.int64 if isinstance(observation_space, gym.spaces.Discrete) else np.float32
        act_dtype = np.int64 if isinstance(action_space, gym.spaces.Discrete) else np.float32
        self._obs_shape = () if obs_dtype == np.int64 else observation_space.shape
        self._act_shape = () if act_dtype == np.int64 else (int(np.prod(action_space.shape)),)
        self.n = 0  # steps stored
        cap = 0
        self._cols: dict[str, np.ndarray] = {
            "obs": np.zeros((cap, *self._obs_shape), obs_dtype),
            "act": np.zeros((cap, *self._act_shape), act_dtype),
            "rew": np.zeros(cap, np.float32),
            "term": np.zeros(cap, bool),
            "trunc": np.zeros(cap, bool),
            "rtg": np.zeros(cap, np.float32),
            "timestep": np.zeros(cap, np.int64),
            "episode": np.zeros(cap, np.int64),
        }
        self.ep_start = np.zeros(1, np.int64)  # (E+1,) offsets
        self.stream = np.zeros(0, np.int64)  # (E,) history/task id of each episode
        self._torch: dict[str, torch.Tensor] | None = None
        self._device = torch.device("cpu")

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_episodes(
        cls,
        episodes: Iterable[Mapping[str, np.ndarray]],
        observation_space: gym.Space,
        action_space: gym.Space,
        meta: Mapping[str, Any] | None = None,
    ) -> "ReplayStore":
        """Bulk build from per-episode dicts with keys obs (T or T+1 rows), act, rew, term, trunc."""
        store = cls(observation_space, action_space, meta)
        store.extend(episodes)
        return store

    @classmethod
    def from_minari(cls, dataset_id: str) -> "ReplayStore":
        """Load a local Minari dataset (see `seqrl.data.minari_io.load_store`)."""
        from seqrl.data.minari_io import load_store

        return load_store(dataset_id)

    def add_episode(self, obs, act, rew, term=None, trunc=None, stream: int = 0) -> None:
        """Append one finished episode (online use). `obs` may carry the final observation (T+1 rows)."""
        T = len(rew)
        term = np.zeros(T, bool) if term is None else term
        trunc = np.zeros(T, bool) if trunc is None else trunc
        self.extend([{"obs": obs, "act": act, "rew": rew, "term": term, "trunc": trunc, "stream": stream}])

    def extend(self, episodes: Iterable[Mapping[str, Any]]) -> None:
        """Append several episodes with one concatenation per column."""
        eps = list(episodes)
        if not eps:
            if self.n == 0:
                raise DataError("no episodes: the dataset is empty")
            return
        lengths = np.array([len(e["rew"]) for e in eps], np.int64)
        where = self.meta.get("dataset_id", "store")
        for i, (e, T) in enumerate(zip(eps, lengths)):
            if T == 0:
                raise DataError(f"{where}: episode {self.num_episodes + i} has zero steps")
            for k in ("act", "term", "trunc"):
                if len(e[k]) != T:
                    raise DataError(f"{where}: episode {self.num_episodes + i}: {len(e[k])} {k} for {T} rewards")
            if len(e["obs"]) not in (T, T + 1):
                raise DataError(f"{where}: episode {self.num_episodes + i}: {len(e['obs'])} observations for {T} steps")
        new = {
            "obs": np.concatenate([np.asarray(e["obs"])[: len(e["rew"])] for e in eps]),
            "act": np.concatenate([np.asarray(e["act"]) for e in eps]),
            "rew": np.concatenate([np.asarray(e["rew"]) for e in eps]).astype(np.float32),
            "term": np.concatenate([np.asarray(e["term"]) for e in eps]).astype(bool),
            "trunc": np.concatenate([np.asarray(e["trunc"]) for e in eps]).astype(bool),
        }
        new["obs"] = self._cast("observations", new["obs"], self.observation_space, self._obs_shape, where)
        new["act"] = self._cast("actions", new["act"], self.action_space, self._act_shape, where)
        _check_finite("rewards", new["rew"], where)
        # derived columns, vectorised over all new steps
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ep_local = np.repeat(np.arange(len(eps)), lengths)
        new["timestep"] = np.arange(offsets[-1]) - offsets[ep_local]
        csum = np.cumsum(new["rew"], dtype=np.float64)
        ep_total_end = csum[offsets[1:] - 1][ep_local]  # cumulative sum at each step's episode end
        new["rtg"] = (ep_total_end - csum + new["rew"]).astype(np.float32)
        new["episode"] = ep_local + self.num_episodes
        self._append(new)
        self.ep_start = np.concatenate([self.ep_start, self.ep_start[-1] + offsets[1:]])
        self.stream = np.concatenate([self.stream, [int(e.get("stream", 0)) for e in eps]]).astype(np.int64)

    def _cast(self, name: str, x: np.ndarray, space: gym.Space, shape: tuple, where: str) -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            x = x.reshape(len(x), -1)[:, 0] if x.ndim > 1 else x
            if np.issubdtype(x.dtype, np.floating):
                _check_finite(name, x, where)
            x = x.astype(np.int64)
            if x.min() < 0 or x.max() >= space.n:
                raise DataError(f"{where}: {name} outside Discrete({space.n}): range [{x.min()}, {x.max()}]")
            return x
        x = np.asarray(x, np.float32)
        if x.shape[1:] != tuple(shape) and x.size == len(x) * int(np.prod(shape)):
            x = x.reshape(len(x), *shape)  # e.g. (T,) actions of a Box of shape (1,)
        if x.shape[1:] != tuple(shape):
            raise DataError(f"{where}: {name} have shape {x.shape[1:]} per step, the space says {tuple(shape)}")
        _check_finite(name, x, where)
        return x

    def _append(self, new: dict[str, np.ndarray]) -> None:
        m = len(new["rew"])
        need = self.n + m
        cap = len(self._cols["rew"])
        if need > cap:  # grow geometrically so online appends stay amortised O(1)
            cap = max(need, 2 * cap)
            for k, col in self._cols.items():
                grown = np.zeros((cap, *col.shape[1:]), col.dtype)
                grown[: self.n] = col[: self.n]
                self._cols[k] = grown
        for k, v in new.items():
            self._cols[k][self.n : need] = v
        self.n = need
        self._torch = None  # device copies are rebuilt lazily

    # ------------------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.n

    @property
    def num_episodes(self) -> int:
        return len(self.ep_start) - 1

    def column(self, name: str) -> np.ndarray:
        """A view of one column over the stored steps."""
        return self._cols[name][: self.n]

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.ep_start)

    @property
    def episode_returns(self) -> np.ndarray:
        return self.column("rtg")[self.ep_start[:-1]].astype(np.float64)

    def obs_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and std of Box observations (std floored at 1e-6)."""
        if isinstance(self.observation_space, gym.spaces.Discrete):
            return np.zeros(()), np.ones(())
        obs = self.column("obs").astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-6).astype(np.float32)

    def return_stats(self) -> dict[str, float]:
        r = self.episode_returns
        return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}

    # -------------------------------------------------------------------------------- sampling
    def to(self, device: torch.device | str) -> "ReplayStore":
        """Keep a copy of the columns on `device` (e.g. the GPU) for sampling there. Returns self."""
        self._device = torch.device(device)
        self._torch = None
        return self

    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._torch is None:
            if self.n == 0:
                raise DataError("cannot sample from an empty store")
            ep = self.column("episode")
            stream_end = self._stream_ends()
            t = {k: torch.from_numpy(np.ascontiguousarray(self.column(k))) for k in self._cols}
            t["ep_end"] = torch.from_numpy(self.ep_start[1:][ep])  # (N,) end offset of each step's episode
            t["stream_end"] = torch.from_numpy(stream_end[ep])
            self._torch = {k: v.to(self._device) for k, v in t.items()}
        return self._torch

    def _stream_ends(self) -> np.ndarray:
        """(E,) end offset of the run of consecutive episodes sharing each episode's stream id."""
        E = self.num_episodes
        ends = self.ep_start[1:].copy()
        for i in range(E - 2, -1, -1):  # O(E) over episodes, not steps
            if self.stream[i] == self.stream[i + 1]:
                ends[i] = ends[i + 1]
        return ends

    def _gather(self, start: torch.Tensor, K: int, end: torch.Tensor) -> Batch:
        t = self._tensors()
        idx = start[:, None] + torch.arange(K, device=start.device)  # (B, K)
        mask = idx < end[:, None]
        idx = torch.where(mask, idx, start[:, None])

        def g(name: str) -> torch.Tensor:
            x = t[name][idx]
            m = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
            return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))

        timestep = g("timestep")
        return Batch(
            obs=g("obs"), act=g("act"), rew=g("rew"), rtg=g("rtg"), timestep=timestep,
            done=g("term"), first=(timestep == 0) & mask, mask=mask,
        )

    def _starts(self, B: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = self._device if generator is None else generator.device
        start = torch.randint(0, self.n, (B,), generator=generator, device=dev)
        return start.to(self._device)

    def sample_windows(self, batch_size: int, length: int, generator: torch.Generator | None = None) -> Batch:
        """B windows of K steps, each starting at a uniformly drawn step and stopping at its episode's end."""
        start = self._starts(batch_size, generator)
        return self._gather(start, length, self._tensors()["ep_end"][start])

    def sample_histories(self, batch_size: int, length: int, generator: torch.Generator | None = None) -> Batch:
        """Like `sample_windows`, but a window runs on across consecutive episodes of the same stream."""
        start = self._starts(batch_size, generator)
        return self._gather(start, length, self._tensors()["stream_end"][start])

    def windows_at(self, starts: np.ndarray | torch.Tensor, length: int) -> Batch:
        """Deterministic windows at given start steps (tests, evaluation of losses)."""
        start = torch.as_tensor(starts, dtype=torch.long, device=self._device)
        if len(start) and (int(start.min()) < 0 or int(start.max()) >= self.n):
            raise DataError(f"window starts must lie in [0, {self.n}), got [{int(start.min())}, {int(start.max())}]")
        return self._gather(start, length, self._tensors()["ep_end"][start])

    # ------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write the store to one .npz file atomically (temp file, fsync, rename)."""
        header = {
            "format": FORMAT_VERSION,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "meta": self.meta,
        }
        arrays = {k: self.column(k) for k in self.COLUMNS}
        arrays["ep_start"], arrays["stream"] = self.ep_start, self.stream
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "ReplayStore":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no store file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                cols = {k: z[k] for k in (*cls.COLUMNS, "ep_start", "stream")}
            if header.get("format") != FORMAT_VERSION:
                raise DataError(f"store file {path} has format {header.get('format')}, this seqrl reads {FORMAT_VERSION}")
            spaces = space_from_dict(header["observation_space"]), space_from_dict(header["action_space"])
            meta = header["meta"]
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"store file {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
        store = cls(*spaces, meta)
        s = cols["ep_start"]
        if len(s) < 2 or s[-1] != len(cols["rew"]):
            raise DataError(f"store file {path} is inconsistent: offsets do not cover the steps")
        store.extend(
            {"obs": cols["obs"][a:b], "act": cols["act"][a:b], "rew": cols["rew"][a:b], "term": cols["term"][a:b],
             "trunc": cols["trunc"][a:b], "stream": st}
            for a, b, st in zip(s[:-1], s[1:], cols["stream"])
        )
        return store

    def __repr__(self) -> str:
        return (f"ReplayStore({self.num_episodes} episodes, {self.n} steps, obs={self.observation_space}, "
                f"act={self.action_space}, device={self._device})")
