"""ReplayStore: the one owner of trajectory data (storage, derived columns, device copies, save/load).

Dimension letters: N steps stored, E episodes stored, R runs (maximal groups of consecutive stored
episodes that share a stream id), P and Q ring sizes (step and episode slots), B batch, K steps per
sample, A action features.

Episodes carry T+1 observations: the one before each of their T steps and the final one after the
last. The step column `obs` (N, *obs_shape) holds the first T; the per-episode column `final_obs`
(E, *obs_shape) holds the last. So the observation after step t is `obs` of step t+1, or the episode's
`final_obs` at its last step, and samplers return `next_obs` for every step. An episode given with T
observations is a DataError: Minari and every seqrl collector give T+1, and a final observation made up
here (a copy of the last one, zeros) would be silently wrong for every agent that bootstraps from it.

Observation spaces: Box (any dtype), Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of those
(nested too); actions are Box or Discrete. A Dict/Tuple observation is kept as one column per leaf,
named by its flattened key (`leaf_spaces`: Dict keys, Tuple positions "0", "1", nested levels "a/b"),
and `obs`, `final_obs`, `Batch.obs`, `Batch.next_obs` are then flat dicts {leaf: array or tensor};
episodes may give such observations as columns (nested dicts/tuples of T+1-row arrays, Minari's
layout, or flat dicts) or as a sequence of per-step observations (what an env returns).
`flatten_obs`, `unflatten_obs`, `tree_map` and `obs_tensor` are the helpers every caller shares.

Pieces. An online store also holds unfinished episodes, a piece at a time (the env source appends each
env's steps at every collection, so that replay sees steps as they come, not only when their episode ends):
an appended "episode" may be a piece of one, given with `t0`, the index in its episode of its first step
(default 0). Its `timestep` runs on from t0, so `first` (timestep == 0) marks only true episode starts and
a stream's pieces read back, in order, as its episodes; a piece that is not an episode's last ends without
term or trunc, its final observation being the next piece's first. Episode counts, lengths, returns and
rtg are then per piece.

Columns and dtypes. Per step: obs (Box: its own dtype, so uint8 images stay uint8 and integer dtypes
stay integer, except float64, kept as float32; Discrete: int64; MultiDiscrete, MultiBinary: their own
integer dtype; per leaf for Dict/Tuple), act ((N, A) float32 for a Box, (N,) int64 for Discrete), rew
float32, term and trunc bool, and, derived once, vectorised, when episodes arrive: rtg (float32
undiscounted return-to-go, this step's reward included), timestep (int64 index in the episode), episode
(int64 id), ep_end (int64, where the step's episode ends). Per episode: start, length, t0, stream (int64
stream/task id: a learning history, a task, an env), final_obs, and `episode_meta` (a small JSON-able
dict each, e.g. a task seed). Runs and stream groups (which episodes a history or a DPT context may
span) are re-derived, O(E), after every change.

Capacity. `capacity=None` keeps everything. With a capacity (in steps) the store is a FIFO of whole
episodes: appending past it evicts the oldest episodes until the new ones fit, and an episode longer than
the capacity is a DataError. Step and episode columns are rings: each step and each episode has a
logical index, counted since the store was made, and lives in slot `index % ring size`, so an append
writes only its own rows and eviction moves nothing. Rings grow geometrically (the step ring up to the
capacity). `episodes_added` counts every episode ever added. A failed append changes nothing.

Sampling lives in `seqrl.data.samplers`, over `view()`: the rings and the derived index arrays as
torch tensors on the store's device (`to(device)`; on the CPU they share memory with the arrays, on a
GPU an append copies only its new rows). A CUDA graph that captured a sampler is valid until the store
changes.

Save/load: one .npz (no pickles), written atomically, FORMAT_VERSION 2 (format 1 had no final
observations, per-episode meta or capacity, and is refused with a DataError). A Dict/Tuple store holds
one array per leaf ("obs/desired_goal", "final_obs/desired_goal") where a flat one holds "obs". The
pieces' `t0` is one array; a file written before pieces existed has none and loads as whole episodes.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import gymnasium as gym
import numpy as np
import torch

from seqrl.errors import DataError
from seqrl.io import atomic_write

FORMAT_VERSION = 2


# ------------------------------------------------------------------------------------------ spaces
COMPOSITE = (gym.spaces.Dict, gym.spaces.Tuple)
LEAVES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """A JSON-able description of a Box (with its dtype), Discrete, MultiDiscrete, MultiBinary, Dict or Tuple
    space (nested too); DataError for any other kind."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "shape": list(space.shape),
                "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Dict):
        bad = [k for k in space.spaces if not isinstance(k, str)]
        if bad:
            raise DataError(f"Dict space keys must be strings, got {bad}")
        return {"type": "Dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    raise DataError(f"unsupported space {space}: seqrl handles Box, Discrete, MultiDiscrete, MultiBinary, Dict and "
                    f"Tuple observations and Box and Discrete actions")


def space_from_dict(d: Mapping[str, Any]) -> gym.Space:
    kind = d.get("type")
    if kind == "Box":
        dtype = np.dtype(d.get("dtype", "float32"))  # dicts written before dtypes were kept were float32
        return gym.spaces.Box(np.array(d["low"], dtype), np.array(d["high"], dtype), tuple(d["shape"]), dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "MultiDiscrete":
        dtype = np.dtype(d.get("dtype", "int64"))
        return gym.spaces.MultiDiscrete(np.array(d["nvec"], dtype), dtype, start=np.array(d["start"], dtype))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(d["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_dict(s) for k, s in d["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_dict(s) for s in d["spaces"]])
    raise DataError(f"unsupported space {d}")


def check_action_space(space: gym.Space) -> None:
    """DataError unless seqrl can act in `space`: a Box, or a Discrete counting from 0 (the action head's logits)."""
    if not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise DataError(f"unsupported space {space} for actions: seqrl acts in Box and Discrete spaces")
    if isinstance(space, gym.spaces.Discrete) and space.start != 0:
        raise DataError(f"unsupported space {space} for actions: Discrete actions must start at 0")


def leaf_spaces(space: gym.Space, prefix: str = "") -> dict[str, gym.Space]:
    """The leaves of a Dict or Tuple space by flattened key: Dict keys, Tuple positions "0", "1", ..., nested
    levels joined with "/" ("a/b"). DataError for a leaf seqrl cannot store or a key holding "/"."""
    if isinstance(space, gym.spaces.Dict):
        items = list(space.spaces.items())
    elif isinstance(space, gym.spaces.Tuple):
        items = [(str(i), s) for i, s in enumerate(space.spaces)]
    else:
        raise DataError(f"leaf_spaces takes a Dict or Tuple space, got {space}")
    out: dict[str, gym.Space] = {}
    for k, s in items:
        if not isinstance(k, str) or not k or "/" in k:
            raise DataError(f"Dict key {prefix + str(k)!r}: keys must be non-empty strings without '/' (seqrl "
                            f"names nested leaves 'a/b')")
        if isinstance(s, COMPOSITE):
            out |= leaf_spaces(s, f"{prefix}{k}/")
        elif isinstance(s, LEAVES):
            out[prefix + k] = s
        else:
            raise DataError(f"observation leaf {prefix + k!r} is {s}: seqrl handles Box, Discrete, MultiDiscrete "
                            f"and MultiBinary leaves")
    if not out:
        raise DataError(f"observation space {space} has no leaves")
    return out


def is_image(space: gym.Space) -> bool:
    """A uint8 Box of rank 3 (HWC or CHW, see seqrl.tokenizer): embedded by a CNN after scaling to [0, 1],
    never normalised by dataset statistics."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def normalised(space: gym.Space) -> bool:
    """Whether an observation leaf is normalised with per-feature mean/std: every Box that is not an image."""
    return isinstance(space, gym.spaces.Box) and not is_image(space)


def unit_stats(space: gym.Space) -> tuple[Any, Any]:
    """Identity normalisation (mean 0, std 1) in the layout of `ReplayStore.obs_stats` (online agents)."""
    if isinstance(space, COMPOSITE):
        leaves = {k: s for k, s in leaf_spaces(space).items() if normalised(s)}
        return ({k: np.zeros(s.shape, np.float32) for k, s in leaves.items()},
                {k: np.ones(s.shape, np.float32) for k, s in leaves.items()})
    shape = space.shape if normalised(space) else ()
    return np.zeros(shape, np.float32), np.ones(shape, np.float32)


def _mismatch(ours: gym.Space, theirs: gym.Space, what: str, env_id: str) -> str | None:
    """Why two spaces differ (None: they match): kind, shape, n, or Dict/Tuple keys and leaves. Box bounds
    and dtypes are not compared (they differ by rounding between float32/float64 envs)."""
    if type(ours) is not type(theirs):
        return f"{type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(ours, COMPOSITE):
        a, b = leaf_spaces(ours), leaf_spaces(theirs)
        missing, extra = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
        if missing or extra:
            return "; ".join(p for p in (missing and f"missing keys {missing} (in {env_id}'s, not in {what}'s)",
                                         extra and f"extra keys {extra} (in {what}'s, not in {env_id}'s)") if p)
        for k in a:
            why = _mismatch(a[k], b[k], what, env_id)
            if why:
                return f"leaf {k!r}: {why}"
        return None
    if isinstance(ours, gym.spaces.Discrete):
        same = (ours.n, ours.start) == (theirs.n, theirs.start)
    elif isinstance(ours, gym.spaces.MultiDiscrete):
        same = np.array_equal(ours.nvec, theirs.nvec) and np.array_equal(ours.start, theirs.start)
    else:  # Box, MultiBinary
        same = ours.shape == theirs.shape
    return None if same else f"{ours} vs {theirs}"


def same_space(a: gym.Space, b: gym.Space) -> bool:
    """Same kind and shape, same Dict keys and leaves (Box bounds may differ by rounding)."""
    return _mismatch(a, b, "", "") is None


def check_spaces(observation_space: gym.Space, action_space: gym.Space, env: gym.Env | gym.vector.VectorEnv,
                 what: str) -> None:
    """Raise DataError naming the space of `what` (a dataset, a policy) that `env` does not share, and how
    (for Dict observations: the missing and extra keys)."""
    env_obs = getattr(env, "single_observation_space", env.observation_space)
    env_act = getattr(env, "single_action_space", env.action_space)
    env_id = env.spec.id if env.spec else "the env"
    for name, ours, theirs in (("observation", observation_space, env_obs), ("action", action_space, env_act)):
        why = _mismatch(ours, theirs, what, env_id)
        if why:
            raise DataError(f"{what}: {name} space {ours} does not match {env_id}'s {theirs}: {why}")


# --------------------------------------------------------------------------- observation trees
def flatten_obs(obs: Any) -> Any:
    """A Dict/Tuple observation (nested dicts and tuples of arrays, as Gymnasium and Minari give them) as one
    flat dict of leaves keyed as `leaf_spaces` keys them; anything else unchanged. Flat keys stay flat."""
    if isinstance(obs, Mapping):
        items = obs.items()
    elif isinstance(obs, tuple):
        items = ((str(i), v) for i, v in enumerate(obs))
    else:
        return obs
    out = {}
    for k, v in items:
        sub = flatten_obs(v)
        if isinstance(sub, dict):
            out |= {f"{k}/{kk}": vv for kk, vv in sub.items()}
        else:
            out[str(k)] = sub
    return out


def unflatten_obs(leaves: Mapping[str, Any], space: gym.Space, prefix: str = "") -> Any:
    """The inverse of `flatten_obs` for `space`: nested dicts and tuples of the leaves (Minari's layout)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: unflatten_obs(leaves, s, f"{prefix}{k}/") for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(unflatten_obs(leaves, s, f"{prefix}{i}/") for i, s in enumerate(space.spaces))
    return leaves[prefix[:-1]]


def tree_map(fn: Any, x: Any, *rest: Any) -> Any:
    """fn over the leaves of a flat dict of leaves (the same keys of `rest` alongside), or on x itself."""
    if isinstance(x, dict):
        return {k: fn(v, *(r[k] for r in rest)) for k, v in x.items()}
    return fn(x, *rest)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """t on `device`: asynchronously to an accelerator, synchronously to the CPU (an asynchronous device-to-host
    copy may still be running when the caller reads the result)."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")


def obs_tensor(obs: Any, device: torch.device | str) -> torch.Tensor | dict[str, torch.Tensor]:
    """Env observations (a vector env's batch, or one) as tensors on `device`: a Dict/Tuple observation
    becomes a flat dict of leaf tensors. The one conversion evaluation, env sources and PPO use."""
    return tree_map(lambda o: torch.as_tensor(np.asarray(o), device=device), flatten_obs(obs))


def obs_columns(obs: Any, space: gym.Space, where: str) -> Any:
    """Rows of observations in the store's form: one array, or for a Dict/Tuple space a flat dict of leaf
    arrays, made from columns (a dict or tuple of arrays, Minari's layout) or from a sequence of per-step
    observations (what an env gives step by step). DataError naming missing and extra keys."""
    if not isinstance(space, COMPOSITE):
        return np.asarray(obs)
    if isinstance(obs, (Mapping, tuple)):
        cols = flatten_obs(obs)
    else:
        steps = [flatten_obs(o) for o in obs]
        if not steps or not all(isinstance(s, dict) and s.keys() == steps[0].keys() for s in steps):
            raise DataError(f"{where}: observations are not {type(space).__name__} observations with the same keys "
                            f"at every step")
        cols = {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}
    if not isinstance(cols, dict):
        raise DataError(f"{where}: observations are a {type(obs).__name__}, the space is {space}")
    keys = leaf_spaces(space)
    missing, extra = sorted(keys.keys() - cols.keys()), sorted(cols.keys() - keys.keys())
    if missing or extra:
        raise DataError(f"{where}: observation keys differ from the space's: missing {missing}, extra {extra}")
    return {k: np.asarray(cols[k]) for k in keys}


def _field_layout(space: gym.Space, action: bool) -> tuple[tuple[int, ...], np.dtype]:
    """Per-step shape and storage dtype of an observation leaf or an action space."""
    if isinstance(space, gym.spaces.Discrete):
        return (), np.dtype(np.int64)
    if action:
        return (int(np.prod(space.shape)),), np.dtype(np.float32)
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float64:
        return tuple(space.shape), np.dtype(np.float32)
    return tuple(space.shape), np.dtype(space.dtype)  # MultiDiscrete, MultiBinary: their own integer dtype


def _to_column(name: str, x: Any, space: gym.Space, shape: tuple, dtype: np.dtype, where: str,
               bounds: bool = False) -> np.ndarray:
    """Rows of one field in the store's layout; DataError for a wrong shape, NaN/inf or a value out of range
    (integers: the space's range; floats of a Box: its finite bounds when `bounds`)."""
    x = np.asarray(x)
    if x.dtype == object:
        raise DataError(f"{where}: {name} are Python objects, not numbers (the space is {space})")
    if isinstance(space, gym.spaces.Discrete) and x.ndim > 1:
        x = x.reshape(len(x), -1)[:, 0]
    if x.shape[1:] != shape and x.size == len(x) * int(np.prod(shape)):
        x = x.reshape(len(x), *shape)  # e.g. (T,) actions of a Box of shape (1,)
    if x.shape[1:] != shape:
        raise DataError(f"{where}: {name} have shape {x.shape[1:]} per step, the space says {shape}")
    if np.issubdtype(x.dtype, np.floating):
        _check_finite(name, x, where)
    if np.issubdtype(dtype, np.floating):
        x = x.astype(dtype, copy=False)
        _check_finite(name, x, where)  # float64 beyond float32's range
        if bounds:
            check_box_bounds(name, x, space, where)
        return x
    if np.issubdtype(x.dtype, np.floating) and (x != np.round(x)).any():
        raise DataError(f"{where}: {name} are not whole numbers, the space holds {dtype.name}")
    if isinstance(space, gym.spaces.Discrete):
        lo, hi = space.start, space.start + space.n - 1
    elif isinstance(space, gym.spaces.MultiDiscrete):
        lo, hi = space.start, space.start + space.nvec - 1
    elif isinstance(space, gym.spaces.MultiBinary) or dtype == np.bool_:
        lo, hi = 0, 1
    else:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if x.size and ((x.min(0) < lo).any() or (x.max(0) > hi).any()):
        what = dtype.name if isinstance(space, gym.spaces.Box) else str(space)
        raise DataError(f"{where}: {name} outside {what}: range [{x.min()}, {x.max()}]")
    return x.astype(dtype, copy=False)


def check_box_bounds(name: str, x: np.ndarray, space: gym.Space, where: str) -> None:
    """DataError when rows x (n, *shape) leave a Box's finite bounds by more than a rounding slack (1e-4
    relative): finite garbage (a flipped byte turning 0.5 into -3e38) passes every NaN check but not this."""
    if not isinstance(space, gym.spaces.Box) or not x.size:
        return
    low = np.broadcast_to(np.asarray(space.low, np.float64), space.shape).reshape(-1)
    high = np.broadcast_to(np.asarray(space.high, np.float64), space.shape).reshape(-1)
    if not (np.isfinite(low).any() or np.isfinite(high).any()):
        return
    flat = x.reshape(len(x), -1)
    slack = 1e-4 * np.maximum(1.0, np.maximum(np.abs(np.nan_to_num(low, posinf=0, neginf=0)),
                                              np.abs(np.nan_to_num(high, posinf=0, neginf=0))))
    bad = (flat < low - slack) | (flat > high + slack)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise DataError(f"{where}: {name} outside the space's bounds: {flat[t, j]:.6g} at step {t}, element {j}, "
                        f"bounds [{low[j]:.6g}, {high[j]:.6g}] (corrupt data, or recorded on another env)")


def _check_finite(name: str, x: np.ndarray, where: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0]
        raise DataError(f"{where}: {name} holds NaN or inf (first at step {bad})")


# ------------------------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """B samples of K steps, ready for the tokenizer. Padding positions hold zeros and mask False.

    `obs` and `next_obs` are a tensor, or for a Dict/Tuple observation space a flat dict of leaf tensors
    keyed as `leaf_spaces` keys them, each (B, K, *leaf_shape) in its native dtype."""

    obs: Any  # (B, K, *obs_shape) native dtype (uint8 images stay uint8), (B, K) int64 for Discrete; or {leaf: ...}
    next_obs: Any  # like obs: the observation after step t (the episode's final one at its last step)
    act: torch.Tensor  # (B, K, A) float32, or (B, K) int64 for Discrete
    rew: torch.Tensor  # (B, K) float32
    rtg: torch.Tensor  # (B, K) float32 undiscounted return-to-go, reward of this step included
    timestep: torch.Tensor  # (B, K) int64 index of the step inside its episode
    term: torch.Tensor  # (B, K) bool the episode terminated at this step
    trunc: torch.Tensor  # (B, K) bool the episode was truncated at this step
    first: torch.Tensor  # (B, K) bool first step of an episode
    mask: torch.Tensor  # (B, K) bool real step (True) or padding (False)
    stream: torch.Tensor  # (B, K) int64 stream/task id of the step's episode

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: tree_map(lambda t: to_device(t, device), getattr(self, f.name)) for f in fields(self)})

    def split(self, n: int, i: int) -> "Batch":
        """The i-th of n equal slices along the batch (DDP ranks)."""
        b = self.mask.shape[0] // n
        part = lambda t: t[i * b : (i + 1) * b]  # noqa: E731
        return Batch(**{f.name: tree_map(part, getattr(self, f.name)) for f in fields(self)})


# ------------------------------------------------------------------------------------------ rings
def _spans(a: int, b: int, size: int) -> Iterator[tuple[int, int, int]]:
    """(first slot, end slot, offset in [a, b)) of the at most two slot ranges holding logical rows [a, b)."""
    i = a
    while i < b:
        lo = i % size
        hi = min(size, lo + b - i)
        yield lo, hi, i - a
        i += hi - lo


class _Ring:
    """Columns over logical rows [head, tail); row i lives in slot i % size. Rows move only when the ring
    grows (geometrically, up to `limit`), which bumps `layout` so that device copies are rebuilt. Each
    column has one spare row past the slots, always zero: samplers point padding at it."""

    def __init__(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]], limit: int | None = None):
        self.cols = {k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in spec.items()}
        self.limit = limit
        self.head = self.tail = 0
        self.layout = 0

    @property
    def size(self) -> int:
        return len(next(iter(self.cols.values()))) - 1

    def __len__(self) -> int:
        return self.tail - self.head

    def read(self, name: str) -> np.ndarray:
        """The stored rows of one column, oldest first: a view unless they wrap around the ring's end."""
        col = self.cols[name]
        parts = [col[lo:hi] for lo, hi, _ in _spans(self.head, self.tail, self.size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else col[:0]

    def drop_to(self, head: int) -> None:
        """Forget the rows before `head` (which may lie past the tail: then the ring is empty there)."""
        self.head, self.tail = head, max(self.tail, head)

    def push(self, rows: Mapping[str, np.ndarray]) -> None:
        m = len(next(iter(rows.values())))
        need = len(self) + m
        if need > self.size:
            size = max(need, 2 * self.size) if self.limit is None else min(self.limit, max(need, 2 * self.size))
            old = {k: self.read(k) for k in self.cols}
            self.cols = {k: np.zeros((size + 1, *c.shape[1:]), c.dtype) for k, c in self.cols.items()}
            self.layout += 1
            self._write(self.head, old)
        self._write(self.tail, rows)
        self.tail += m

    def _write(self, a: int, rows: Mapping[str, np.ndarray]) -> None:
        m = len(next(iter(rows.values())))
        for lo, hi, off in _spans(a, a + m, self.size):
            for k, v in rows.items():
                self.cols[k][lo:hi] = v[off : off + hi - lo]


@dataclass(frozen=True)
class StoreView:
    """The store as tensors on its device at one moment: all the samplers read.

    Steps and episodes are named by logical index; step i lives in slot i % P of `step`, episode e in
    slot e % Q of `ep`; slot P of `step` and slot Q of `ep` hold zeros (where padding points). Stored
    steps are [head, head + n), stored episodes [ep_head, ep_head + E); k = e - ep_head numbers the
    stored episodes 0..E-1 (the index of the per-episode arrays of `idx`).
    """

    step: dict[str, Any]  # (P+1, ...) obs act rew term trunc rtg timestep episode ep_end; obs: {leaf: ...} for
    #   a Dict/Tuple space, as final_obs in `ep`
    ep: dict[str, Any]  # (Q+1, ...) start length stream final_obs (final_obs: {leaf: ...} for Dict/Tuple)
    idx: dict[str, torch.Tensor]  # run_of (E,) run of episode k; runs_lo, runs_hi (R,) step range of each run;
    #   order (E,) episodes k sorted by stream; cum (E+1,) step positions of `order` laid end to end; pos (E,)
    #   position of episode k's first step; task_lo, task_hi (E,) positions of episode k's stream group;
    #   streams_lo, streams_hi (G,) positions of each stream group
    head: int
    n: int
    ep_head: int
    E: int
    streams_len: np.ndarray  # (G,) host copy of the stream groups' lengths (for draws whose range depends on them)
    device: torch.device

    @property
    def P(self) -> int:
        return len(self.step["rew"]) - 1

    @property
    def Q(self) -> int:
        return len(self.ep["length"]) - 1


# ------------------------------------------------------------------------------------------ store
class ReplayStore:
    """Columnar episodes with T+1 observations. Build with `from_episodes`, `from_minari`, `load`, `extend`."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, meta: Mapping[str, Any] | None = None,
                 capacity: int | None = None):
        if isinstance(observation_space, COMPOSITE):
            leaf_spaces(observation_space)  # DataError naming an unsupported leaf
        space_to_dict(observation_space), check_action_space(action_space)  # raise on unsupported spaces
        if capacity is not None and (not isinstance(capacity, (int, np.integer)) or capacity < 1):
            raise DataError(f"store capacity must be a positive number of steps or None, got {capacity!r}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.meta: dict[str, Any] = dict(meta or {})
        self.capacity = None if capacity is None else int(capacity)
        # observation columns by suffix: "" for one array, "/key" per leaf of a Dict/Tuple ("obs/desired_goal")
        self._obs_leaves = ({"/" + k: sp for k, sp in leaf_spaces(observation_space).items()}
                            if isinstance(observation_space, COMPOSITE) else {"": observation_space})
        obs_layout = {suf: _field_layout(sp, action=False) for suf, sp in self._obs_leaves.items()}
        self._act_layout = _field_layout(action_space, action=True)
        i64, f32, b = np.dtype(np.int64), np.dtype(np.float32), np.dtype(bool)
        self._steps = _Ring({**{"obs" + suf: lay for suf, lay in obs_layout.items()}, "act": self._act_layout,
                             "rew": ((), f32), "term": ((), b), "trunc": ((), b), "rtg": ((), f32),
                             "timestep": ((), i64), "episode": ((), i64), "ep_end": ((), i64)}, self.capacity)
        self._eps = _Ring({"start": ((), i64), "length": ((), i64), "t0": ((), i64), "stream": ((), i64),
                           **{"final_obs" + suf: lay for suf, lay in obs_layout.items()}})
        self.episode_meta: list[dict[str, Any]] = []  # (E,) one dict per stored episode
        self.episodes_added = 0  # every episode ever added, evicted ones included
        self._derived: dict[str, np.ndarray] = {}
        self._device = torch.device("cpu")
        self._view: StoreView | None = None
        self._dev: dict[str, dict[str, torch.Tensor]] = {}  # device copies of the rings
        self._dev_key: tuple = ()  # (device, layouts) the copies were made for
        self._synced = {"step": 0, "ep": 0}  # ring tails already on the device

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_episodes(cls, episodes: Iterable[Mapping[str, Any]], observation_space: gym.Space,
                      action_space: gym.Space, meta: Mapping[str, Any] | None = None,
                      capacity: int | None = None) -> "ReplayStore":
        """Bulk build from per-episode dicts (see `extend`)."""
        store = cls(observation_space, action_space, meta, capacity)
        store.extend(episodes)
        return store

    @classmethod
    def from_minari(cls, dataset_id: str) -> "ReplayStore":
        """Load a local Minari dataset (see `seqrl.data.minari_io.load_store`)."""
        from seqrl.data.minari_io import load_store

        return load_store(dataset_id)

    def add_episode(self, obs, act, rew, term=None, trunc=None, stream: int = 0,
                    meta: Mapping[str, Any] | None = None) -> None:
        """Append one finished episode (online use): obs (T+1, ...), act (T, ...), rew (T,)."""
        T = len(rew)
        term = np.zeros(T, bool) if term is None else term
        trunc = np.zeros(T, bool) if trunc is None else trunc
        self.extend([{"obs": obs, "act": act, "rew": rew, "term": term, "trunc": trunc, "stream": stream,
                      "meta": meta}])

    def extend(self, episodes: Iterable[Mapping[str, Any]]) -> None:
        """Append episodes, one concatenation per column: dicts with obs (T+1 rows), act, rew, term, trunc
        (T rows each) and optionally stream (int, default 0), meta (a JSON-able dict) and t0 (a piece of an
        episode: the index in it of the piece's first step, default 0)."""
        eps = list(episodes)
        where = self.meta.get("dataset_id", "store")
        if not eps:
            if len(self) == 0:
                raise DataError("no episodes: the dataset is empty")
            return
        lengths = np.array([len(e["rew"]) for e in eps], np.int64)
        extras, obs = [], []  # (stream, meta) and observation columns of each episode
        for i, (e, T) in enumerate(zip(eps, lengths)):
            name = f"{where}: episode {self.episodes_added + i}"
            if T == 0:
                raise DataError(f"{name} has zero steps")
            for k in ("act", "term", "trunc"):
                if len(e[k]) != T:
                    raise DataError(f"{name}: {len(e[k])} {k} for {T} rewards")
            o = obs_columns(e["obs"], self.observation_space, name)
            for key, v in (o.items() if isinstance(o, dict) else [("", o)]):
                rows = len(v) if np.ndim(v) else 0
                if rows != T + 1:
                    what = f"{rows} observations" + (f" of {key!r}" if key else "")
                    raise DataError(f"{name}: {what} for {T} steps; give T+1, the final one included")
            obs.append(o)
            extras.append(episode_extras(e, name))
            if not isinstance(e.get("t0", 0), (int, np.integer)) or e.get("t0", 0) < 0:
                raise DataError(f"{name}: t0 must be a non-negative int (the index in its episode of the piece's "
                                f"first step), got {e['t0']!r}")

        def join(fn):  # fn over each leaf's per-episode arrays
            return {k: fn([o[k] for o in obs]) for k in obs[0]} if isinstance(obs[0], dict) else fn(obs)

        self._append(where, lengths, obs=join(lambda xs: np.concatenate([x[:-1] for x in xs])),
                     final_obs=join(lambda xs: np.stack([x[-1] for x in xs])),
                     act=np.concatenate([np.asarray(e["act"]) for e in eps]),
                     rew=np.concatenate([np.asarray(e["rew"], np.float64) for e in eps]),
                     term=np.concatenate([np.asarray(e["term"]) for e in eps]).astype(bool),
                     trunc=np.concatenate([np.asarray(e["trunc"]) for e in eps]).astype(bool),
                     stream=np.array([x[0] for x in extras], np.int64), meta=[x[1] for x in extras],
                     t0=np.array([e.get("t0", 0) for e in eps], np.int64))

    def _append(self, where: str, lengths: np.ndarray, obs, final_obs, act, rew, term, trunc, stream: np.ndarray,
                meta: list[dict[str, Any]], t0: np.ndarray) -> None:
        """Validate, derive and append M episodes given as columns (m steps); evict to fit the capacity."""
        M, m = len(lengths), int(lengths.sum())
        if self.capacity is not None and lengths.max() > self.capacity:
            i = int(np.argmax(lengths > self.capacity))
            raise DataError(f"{where}: episode {self.episodes_added + i} has {lengths[i]} steps, more than the "
                            f"store's capacity of {self.capacity} steps")
        obs, final_obs = self._obs_rows("obs", obs, where), self._obs_rows("final_obs", final_obs, where)
        act = _to_column("actions", act, self.action_space, *self._act_layout, where)
        _check_finite("rewards", rew, where)
        rew32 = rew.astype(np.float32)
        _check_finite("rewards", rew32, where)
        # derived columns, vectorised over all new steps
        off = np.concatenate([[0], np.cumsum(lengths)])  # (M+1,) offsets of the new episodes
        ep_local = np.repeat(np.arange(M), lengths)  # (m,)
        csum = np.cumsum(rew32, dtype=np.float64)  # of the stored rewards, so that a loaded store matches
        rtg = (csum[off[1:] - 1][ep_local] - csum + rew32).astype(np.float32)
        base = self._steps.tail  # logical index of the first new step
        new = {**obs, "act": act, "rew": rew32, "term": term, "trunc": trunc, "rtg": rtg,
               "timestep": t0[ep_local] + np.arange(m) - off[ep_local], "episode": self.episodes_added + ep_local,
               "ep_end": base + off[1:][ep_local]}
        new_eps = {"start": base + off[:-1], "length": lengths, "t0": t0, "stream": stream, **final_obs}
        # FIFO: drop the d oldest of (stored + new) episodes so that the rest fits the capacity
        d = 0
        excess = len(self) + m - (self.capacity if self.capacity is not None else len(self) + m)
        if excess > 0:
            d = int(np.searchsorted(np.cumsum(np.concatenate([self.episode_lengths, lengths])), excess)) + 1
        d_old = min(d, self.num_episodes)
        d_new = d - d_old
        starts = self._eps.read("start")
        self._steps.drop_to(int(starts[d_old]) if d_old < len(starts) else base + int(off[d_new]))
        self._eps.drop_to(self._eps.head + d)
        self._steps.push({k: v[off[d_new]:] for k, v in new.items()})
        self._eps.push({k: v[d_new:] for k, v in new_eps.items()})
        self.episode_meta = self.episode_meta[d_old:] + meta[d_new:]
        self.episodes_added += M
        self._derive()
        self._view = None

    def _obs_rows(self, col: str, obs: Any, where: str) -> dict[str, np.ndarray]:
        """Observation rows (an array, or {leaf: array}) as the ring's columns col + suffix, validated."""
        out = {}
        for suf, sp in self._obs_leaves.items():
            x = obs[suf[1:]] if suf else obs
            name = f"observations {suf[1:]!r}" if suf else "observations"
            out[col + suf] = _to_column(name, x, sp, *_field_layout(sp, False), where, bounds=True)
        return out

    def _obs_tree(self, ring: _Ring, col: str) -> Any:
        """The stored rows of an observation column: an array, or {leaf: array} for a Dict/Tuple space."""
        if "" in self._obs_leaves:
            return ring.read(col)
        return {suf[1:]: ring.read(col + suf) for suf in self._obs_leaves}

    def _derive(self) -> None:
        """Runs (consecutive episodes of one stream) and stream groups (all episodes of one stream), O(E)."""
        start, length, stream = (self._eps.read(k) for k in ("start", "length", "stream"))
        E = len(start)
        new_run = np.r_[True, stream[1:] != stream[:-1]]
        runs_lo = start[new_run]
        runs_hi = np.r_[runs_lo[1:], self._steps.tail]
        order = np.argsort(stream, kind="stable")
        cum = np.r_[0, np.cumsum(length[order])]
        rank = np.empty(E, np.int64)
        rank[order] = np.arange(E)
        s = stream[order]
        new_task = np.r_[True, s[1:] != s[:-1]]
        task_lo = cum[:-1][new_task]
        task_hi = np.r_[task_lo[1:], cum[-1]]
        task_of = (np.cumsum(new_task) - 1)[rank]
        self._derived = {"run_of": np.cumsum(new_run) - 1, "runs_lo": runs_lo, "runs_hi": runs_hi, "order": order,
                         "cum": cum, "pos": cum[rank], "task_lo": task_lo[task_of], "task_hi": task_hi[task_of],
                         "streams_lo": task_lo, "streams_hi": task_hi}

    # ------------------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self._steps)

    @property
    def num_episodes(self) -> int:
        return len(self._eps)

    def column(self, name: str) -> Any:
        """One step column over the stored steps, oldest first: obs act rew term trunc rtg timestep, or
        episode (the stored-episode index 0..E-1 of each step). A view (valid until the next append)
        unless the steps wrap around the ring's end. `obs` of a Dict/Tuple space is {leaf: array}."""
        if name not in ("obs", "act", "rew", "term", "trunc", "rtg", "timestep", "episode"):
            raise KeyError(f"no step column {name!r}")
        if name == "obs":
            return self._obs_tree(self._steps, "obs")
        col = self._steps.read(name)
        return col - self._eps.head if name == "episode" else col

    @property
    def ep_start(self) -> np.ndarray:
        """(E+1,) offsets of the stored episodes in the stored steps."""
        return np.r_[self._eps.read("start") - self._steps.head, len(self)].astype(np.int64)

    @property
    def stream(self) -> np.ndarray:
        """(E,) stream/task id of each stored episode."""
        return self._eps.read("stream")

    @property
    def t0(self) -> np.ndarray:
        """(E,) the index in its episode of each stored episode's first step: 0 but for pieces (see Pieces)."""
        return self._eps.read("t0")

    @property
    def final_obs(self) -> Any:
        """(E, *obs_shape) the observation after each stored episode's last step ({leaf: ...} for Dict/Tuple)."""
        return self._obs_tree(self._eps, "final_obs")

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._eps.read("length")

    @property
    def episode_returns(self) -> np.ndarray:
        return self._steps.cols["rtg"][self._eps.read("start") % max(self._steps.size, 1)].astype(np.float64)

    def obs_stats(self) -> tuple[Any, Any]:
        """Per-feature float32 mean and std (floored at 1e-6) of every normalised observation leaf (a Box that
        is not an image, float or integer), summed in float64 in chunks of about 16 MB, so that a large
        store is never widened whole. A flat space gives two arrays (identity of shape () when it is not
        normalised: Discrete, MultiDiscrete, MultiBinary, images); a Dict/Tuple space two dicts by leaf
        key, holding the normalised leaves only."""
        if "" in self._obs_leaves:
            sp = self.observation_space
            return _moments(self.column("obs")) if normalised(sp) else unit_stats(sp)
        cols = self.column("obs")
        stats = {suf[1:]: _moments(cols[suf[1:]]) for suf, sp in self._obs_leaves.items() if normalised(sp)}
        return {k: m for k, (m, _) in stats.items()}, {k: sd for k, (_, sd) in stats.items()}

    def return_stats(self) -> dict[str, float]:
        r = self.episode_returns
        return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}

    # ------------------------------------------------------------------------------- device copies
    def to(self, device: torch.device | str) -> "ReplayStore":
        """Keep a copy of the columns on `device` (e.g. the GPU) for sampling there. Returns self."""
        self._device = torch.device(device)
        self._view = None
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def view(self) -> StoreView:
        """The store's columns as tensors on its device (what samplers read); updated after appends."""
        if len(self) == 0:
            raise DataError("cannot sample from an empty store")
        if self._view is None:
            dev, rings = self._device, {"step": self._steps, "ep": self._eps}
            key = (dev, self._steps.layout, self._eps.layout)
            if key != self._dev_key:  # first use, new device or a ring grew: copy everything
                self._dev = {r: {k: torch.from_numpy(c).to(dev) for k, c in ring.cols.items()}
                             for r, ring in rings.items()}
                self._dev_key = key
            elif dev.type != "cpu":  # the CPU tensors share memory with the rings; a GPU copy takes the new rows
                for r, ring in rings.items():
                    for lo, hi, _ in _spans(max(self._synced[r], ring.head), ring.tail, ring.size):
                        for k, c in ring.cols.items():
                            self._dev[r][k][lo:hi].copy_(torch.from_numpy(c[lo:hi]))
            self._synced = {r: ring.tail for r, ring in rings.items()}
            self._view = StoreView(
                step=_group(self._dev["step"], "obs"), ep=_group(self._dev["ep"], "final_obs"),
                idx={k: torch.from_numpy(v).to(dev) for k, v in self._derived.items()},
                head=self._steps.head, n=len(self), ep_head=self._eps.head, E=self.num_episodes,
                streams_len=self._derived["streams_hi"] - self._derived["streams_lo"], device=dev)
        return self._view

    # ------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write the stored episodes to one .npz file atomically (temp file, fsync, rename)."""
        header = {"format": FORMAT_VERSION, "observation_space": space_to_dict(self.observation_space),
                  "action_space": space_to_dict(self.action_space), "meta": self.meta, "capacity": self.capacity,
                  "episodes_added": self.episodes_added, "episode_meta": self.episode_meta}
        arrays = {k: self.column(k) for k in ("act", "rew", "term", "trunc")}
        for col, ring in (("obs", self._steps), ("final_obs", self._eps)):  # one array per observation leaf
            arrays |= {col + suf: ring.read(col + suf) for suf in self._obs_leaves}
        arrays.update(ep_start=self.ep_start, stream=self.stream, t0=self.t0,
                      header=np.frombuffer(json.dumps(header).encode(), np.uint8))
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> "ReplayStore":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no store file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT_VERSION:
                    raise DataError(f"store file {path} has format {header.get('format')}, this seqrl reads "
                                    f"{FORMAT_VERSION}: rebuild it from its dataset")
                spaces = space_from_dict(header["observation_space"]), space_from_dict(header["action_space"])
                leaves = (["/" + k for k in leaf_spaces(spaces[0])] if isinstance(spaces[0], COMPOSITE) else [""])
                cols = {k: z[k] for k in ("act", "rew", "term", "trunc", "ep_start", "stream")}
                cols["t0"] = z["t0"] if "t0" in z.files else np.zeros(len(cols["stream"]), np.int64)  # older files
                for col in ("obs", "final_obs"):  # {leaf: array} for a Dict/Tuple space
                    cols[col] = {suf[1:]: z[col + suf] for suf in leaves} if leaves != [""] else z[col]
            meta, capacity, added, ep_meta = (header[k] for k in ("meta", "capacity", "episodes_added", "episode_meta"))
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"store file {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
        s = cols["ep_start"]
        E = len(s) - 1
        if (E < 1 or s[0] != 0 or (np.diff(s) < 1).any() or added < E
                or any(len(cols[k]) != s[-1] for k in ("act", "rew", "term", "trunc"))
                or any(len(x) != s[-1] for x in _leaves(cols["obs"]))
                or any(len(x) != E for x in (*_leaves(cols["final_obs"]), cols["stream"], cols["t0"], ep_meta))
                or (cols["t0"] < 0).any()):
            raise DataError(f"store file {path} is inconsistent: offsets, final observations, streams, piece "
                            f"offsets t0 and episode meta do not agree")
        store = cls(*spaces, meta, capacity)
        store.episodes_added = store._eps.head = store._eps.tail = int(added) - E  # ids continue where they were
        ep_meta = [episode_extras({"meta": m}, str(path))[1] for m in ep_meta]
        store._append(str(path), np.diff(s), obs=cols["obs"], final_obs=cols["final_obs"], act=cols["act"],
                      rew=cols["rew"].astype(np.float64), term=cols["term"], trunc=cols["trunc"],
                      stream=cols["stream"].astype(np.int64), meta=ep_meta, t0=cols["t0"].astype(np.int64))
        return store

    def __repr__(self) -> str:
        cap = "" if self.capacity is None else f" of {self.capacity}"
        return (f"ReplayStore({self.num_episodes} episodes, {len(self)} steps{cap}, obs={self.observation_space}, "
                f"act={self.action_space}, device={self._device})")


def _group(cols: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    """Leaf columns "name/key" of a Dict/Tuple observation as one entry name: {key: column}."""
    leaves = {k[len(name) + 1 :]: v for k, v in cols.items() if k.startswith(name + "/")}
    return cols if not leaves else {k: v for k, v in cols.items() if not k.startswith(name + "/")} | {name: leaves}


def _leaves(x: Any) -> list[np.ndarray]:
    return list(x.values()) if isinstance(x, dict) else [x]


def _moments(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, *shape) rows -> float32 mean and std per feature (std + 1e-6), float64 sums in ~16 MB chunks."""
    rows = max(1, (1 << 21) // max(1, int(np.prod(obs.shape[1:]))))
    parts = range(0, len(obs), rows)
    mean = sum(obs[i : i + rows].sum(0, dtype=np.float64) for i in parts) / len(obs)
    var = sum(((obs[i : i + rows] - mean) ** 2).sum(0) for i in parts) / len(obs)
    return mean.astype(np.float32), (np.sqrt(var) + 1e-6).astype(np.float32)


def episode_extras(episode: Mapping[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    """An episode's stream id (an int, default 0) and meta (a dict, default {}) as JSON gives them back."""
    stream, meta = episode.get("stream", 0), episode.get("meta")
    if not isinstance(stream, (int, np.integer)):
        raise DataError(f"{name}: stream must be an int, got {stream!r}")
    if not isinstance(meta, (Mapping, type(None))):
        raise DataError(f"{name}: meta must be a dict, got {type(meta).__name__}")
    try:
        return int(stream), json.loads(json.dumps(dict(meta or {}), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: meta is not JSON ({e})") from e
