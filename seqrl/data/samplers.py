"""Samplers over a ReplayStore: each one vectorised call that returns a `Batch`.

Dimension letters: B batch, K steps per sample, C context transitions, P step slots of the store's ring.

- `windows(store, B, K)`: K consecutive steps of one episode from a uniformly drawn step, right-padded
  (mask False) where the episode ends. DT, DM, BC. `anchor="end"`: the window ends at the drawn step and
  reaches back at most K-1 steps, not past its episode's start (d3rlpy's sampling).
- `windows_at(store, starts, K)`: the same at given stored-step indices (tests, fixed evaluation batches).
- `histories(store, B, K, episode_start=False)`: windows that run on across consecutive episodes of one
  stream (a run), padded where the run ends; `first` marks the episode starts inside. With
  `episode_start=True` each starts at the first step of a uniformly drawn episode. AD, in-context RL.
- `sequences(store, B, K)`: world-model training sequences. They run across the episodes of one stream in
  the order they were stored, wherever they lie (an online store interleaves its envs' episodes; each
  env is a stream), with `first` (is_first) True at each episode start; starts are drawn uniformly among
  the positions from which K steps fit inside their stream, so every position is real (mask all True).
  Streams shorter than K are never drawn; when no stream has K steps it is a DataError.
- `context_query(store, B, C)`: DPT. Row b is a Batch of length C+1: positions 0..C-1 are a context of C
  transitions drawn uniformly, with replacement, from all stored steps of one stream id (a task, wherever
  its episodes lie in the store), and position C is the query: a uniformly drawn step of the store, whose
  stream the context comes from, never itself one of the context steps. Tasks are weighted by their number
  of steps. A stream of one step has no context (mask False there).

Every sample reads logical step indices; `_batch` gathers them from the store's ring slots (every leaf of
a Dict/Tuple observation alike: `obs` and `next_obs` are then dicts of leaves). Nothing crosses an
episode (windows), a run (histories) or a stream (sequences, context_query) unmasked.

Graph capture: with the store on a CUDA device and `generator=None`, a sampler does no host
synchronisation (integer draws on the device with Python-int bounds known to the store, gathers,
`searchsorted`; no `.item()`, no data-dependent shapes, no numpy on device data), so a CUDA graph can
capture it once the store's device copy exists (sample once before capturing). A given generator
draws where it lives (e.g. the CPU) and its draws are moved to the store's device.
"""

from __future__ import annotations

import numpy as np
import torch

from seqrl.data.store import Batch, ReplayStore, StoreView, tree_map
from seqrl.errors import DataError


def _draw(v: StoreView, high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform int64 in [0, high) of `shape`, on the store's device."""
    dev = v.device if generator is None else generator.device
    return torch.randint(0, high, shape, generator=generator, device=dev).to(v.device)


def _take(col: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Rows `slot` (any shape) of a column: (*slot.shape, *row_shape). index_select: one flat gather."""
    return col.index_select(0, slot.reshape(-1)).view(*slot.shape, *col.shape[1:])


def _episode(v: StoreView, i: torch.Tensor) -> torch.Tensor:
    """Stored-episode index k (0..E-1) of logical steps i."""
    return _take(v.step["episode"], i % v.P) - v.ep_head


def _batch(v: StoreView, i: torch.Tensor, mask: torch.Tensor) -> Batch:
    """Gather logical steps i (B, K) where mask (B, K) holds; padding reads the rings' zero rows."""
    slot = torch.where(mask, i % v.P, v.P)  # (B, K) step slots
    e = torch.where(mask, _take(v.step["episode"], slot) % v.Q, v.Q)  # (B, K) episode slots
    step = {k: tree_map(lambda c: _take(c, slot), col) for k, col in v.step.items() if k != "episode"}
    last = i + 1 == step["ep_end"]  # (B, K) the step's next observation is its episode's final one
    nxt = torch.where(mask, (i + 1) % v.P, v.P)  # (B, K) slots of the next steps

    def next_obs(col: torch.Tensor, final: torch.Tensor) -> torch.Tensor:  # per observation leaf
        return torch.where(last.view(*mask.shape, *[1] * (col.dim() - 1)), _take(final, e), _take(col, nxt))

    return Batch(obs=step["obs"], next_obs=tree_map(next_obs, v.step["obs"], v.ep["final_obs"]), act=step["act"],
                 rew=step["rew"], rtg=step["rtg"], timestep=step["timestep"], term=step["term"], trunc=step["trunc"],
                 first=(step["timestep"] == 0) & mask, mask=mask, stream=_take(v.ep["stream"], e))


def _window(v: StoreView, start: torch.Tensor, length: int, end: torch.Tensor) -> Batch:
    """K steps from logical steps start (B,), real while before end (B,)."""
    i = start[:, None] + torch.arange(length, device=v.device)  # (B, K)
    return _batch(v, i, i < end[:, None])


def _run_end(v: StoreView, i: torch.Tensor) -> torch.Tensor:
    """Logical end of the run (consecutive episodes of one stream) holding steps i."""
    return v.idx["runs_hi"][v.idx["run_of"][_episode(v, i)]]


WINDOW_ANCHORS = ("start", "end")


def windows(store: ReplayStore, batch_size: int, length: int, generator: torch.Generator | None = None,
            anchor: str = "start") -> Batch:
    """B windows of K steps of one episode around a uniformly drawn step: with anchor "start", from it to at
    most its episode's end; with "end", ending at it, from K-1 steps before it or its episode's first step,
    whichever is later. Real steps come first either way (padding after them)."""
    v = store.view()
    drawn = v.head + _draw(v, v.n, (batch_size,), generator)  # (B,)
    if anchor == "start":
        return _window(v, drawn, length, _take(v.step["ep_end"], drawn % v.P))
    if anchor == "end":
        first = _take(v.ep["start"], _take(v.step["episode"], drawn % v.P) % v.Q)  # (B,) its episode's first step
        return _window(v, torch.maximum(drawn - (length - 1), first), length, drawn + 1)
    raise ValueError(f"window anchor must be one of {list(WINDOW_ANCHORS)}, got {anchor!r}")


def windows_at(store: ReplayStore, starts, length: int) -> Batch:
    """Windows of K steps at given stored-step indices in [0, len(store)) (host input is range-checked)."""
    v = store.view()
    if not isinstance(starts, torch.Tensor) or starts.device.type == "cpu":
        s = np.asarray(starts.cpu() if isinstance(starts, torch.Tensor) else starts, np.int64)
        if s.ndim != 1 or (len(s) and (s.min() < 0 or s.max() >= v.n)):
            raise DataError(f"window starts must be a list in [0, {v.n}), got shape {s.shape}"
                            + (f", range [{s.min()}, {s.max()}]" if s.size else ""))
    start = v.head + torch.as_tensor(starts, dtype=torch.long, device=v.device)  # (B,)
    return _window(v, start, length, v.step["ep_end"][start % v.P])


def histories(store: ReplayStore, batch_size: int, length: int, generator: torch.Generator | None = None,
              episode_start: bool = False) -> Batch:
    """B windows of K steps that run across consecutive episodes of one stream, up to the run's end;
    from a uniformly drawn step, or (episode_start) the first step of a uniformly drawn episode."""
    v = store.view()
    if episode_start:
        k = _draw(v, v.E, (batch_size,), generator)  # (B,) stored episodes
        start = v.ep["start"][(v.ep_head + k) % v.Q]
    else:
        start = v.head + _draw(v, v.n, (batch_size,), generator)
    return _window(v, start, length, _run_end(v, start))


def sequences(store: ReplayStore, batch_size: int, length: int, generator: torch.Generator | None = None) -> Batch:
    """B sequences of K steps of one stream in the order its episodes were stored, starts uniform among the
    positions from which K steps fit inside the stream."""
    v = store.view()
    total = int(np.maximum(v.streams_len - length + 1, 0).sum())  # host: starts that fit, over all streams
    if total == 0:
        raise DataError(f"sequences of {length} steps: no stream in the store has that many steps "
                        f"(the longest has {int(v.streams_len.max())} steps)")
    u = _draw(v, total, (batch_size,), generator)  # (B,) which fitting start
    lo, hi = v.idx["streams_lo"], v.idx["streams_hi"]  # (G,) in stream order
    fit = (hi - lo - length + 1).clamp(min=0)  # (G,) fitting starts per stream
    cum = fit.cumsum(0)  # (G,)
    g = torch.searchsorted(cum, u, right=True)  # (B,) stream of each draw
    p = (lo[g] + u - (cum[g] - fit[g]))[:, None] + torch.arange(length, device=v.device)  # (B, K) positions
    j = torch.searchsorted(v.idx["cum"], p, right=True) - 1  # (B, K) index into episodes sorted by stream
    ep = v.ep_head + v.idx["order"][j]  # (B, K) logical episodes
    i = v.ep["start"][ep % v.Q] + p - v.idx["cum"][j]  # (B, K) logical steps
    return _batch(v, i, torch.ones_like(i, dtype=torch.bool))


def context_query(store: ReplayStore, batch_size: int, context: int,
                  generator: torch.Generator | None = None) -> Batch:
    """B rows of C context transitions from one stream plus the query at position C (see module doc)."""
    v = store.view()
    q = v.head + _draw(v, v.n, (batch_size,), generator)  # (B,) query steps
    k = _episode(v, q)  # (B,)
    lo, hi = v.idx["task_lo"][k], v.idx["task_hi"][k]  # (B,) positions of the query's stream in stream order
    q_pos = v.idx["pos"][k] + q - v.ep["start"][(v.ep_head + k) % v.Q]  # (B,) the query's own position
    size = hi - lo  # (B,) steps of the stream
    u = _draw(v, 1 << 62, (batch_size, context), generator) % (size - 1).clamp(min=1)[:, None]  # (B, C)
    p = lo[:, None] + u
    p = torch.minimum(p + (p >= q_pos[:, None]).long(), hi[:, None] - 1)  # skip the query's position
    j = torch.searchsorted(v.idx["cum"], p, right=True) - 1  # (B, C) index into episodes sorted by stream
    ep = v.ep_head + v.idx["order"][j]  # (B, C) logical episodes
    ctx = v.ep["start"][ep % v.Q] + p - v.idx["cum"][j]  # (B, C) logical steps
    mask = torch.cat([(size > 1)[:, None].expand(-1, context), torch.ones_like(q, dtype=torch.bool)[:, None]], 1)
    return _batch(v, torch.cat([ctx, q[:, None]], 1), mask)
