"""ReplayStore speed: window sampling and loading, against a per-sample Python loop in the same run.

    python experiments/bench_store.py            # 1M-step Hopper-shaped dataset (about 2 minutes)
    python experiments/bench_store.py --steps 100000

Prints windows sampled per second at B=256, K=20 for
  - seqrl: `seqrl.data.samplers.windows` (one vectorised gather per column, next observations included), and
  - baseline: a per-sample loop that slices each episode's arrays, pads and stacks (the way
    CORL's and the DT reference code's datasets build a batch),
and seconds to load the dataset from Minari's HDF5 (`ReplayStore.from_minari`) and from the store's
own .npz (`ReplayStore.load`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch


def naive_batch(episodes, lengths, cum, B, K, rng):
    """The per-sample baseline: sample a step, slice its episode, pad on the right, stack."""
    obs, act, rtg, ts, mask = [], [], [], [], []
    for _ in range(B):
        i = int(rng.integers(cum[-1]))
        e = int(np.searchsorted(cum, i, side="right")) - 1
        s = i - cum[e]
        ep = episodes[e]
        n = min(K, lengths[e] - s)
        pad = K - n
        obs.append(np.pad(ep["obs"][s : s + n], ((0, pad), (0, 0))))
        act.append(np.pad(ep["act"][s : s + n], ((0, pad), (0, 0))))
        rtg.append(np.pad(ep["rtg"][s : s + n], (0, pad)))  # returns-to-go precomputed per episode
        ts.append(np.pad(np.arange(s, s + n), (0, pad)))
        mask.append(np.r_[np.ones(n, bool), np.zeros(pad, bool)])
    return [torch.from_numpy(np.stack(x)) for x in (obs, act, rtg, ts, mask)]


def rate(fn, seconds=3.0):
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--episode-len", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from seqrl.data.minari_io import write_dataset
    from seqrl.data.samplers import windows
    from seqrl.data.store import ReplayStore

    rng = np.random.default_rng(0)
    E, T = args.steps // args.episode_len, args.episode_len
    episodes = [{"obs": rng.standard_normal((T + 1, 11)).astype(np.float32),
                 "act": rng.uniform(-1, 1, (T, 3)).astype(np.float32), "rew": rng.standard_normal(T),
                 "term": np.zeros(T, bool), "trunc": np.eye(T, dtype=bool)[-1]} for _ in range(E)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MINARI_DATASETS_PATH"] = tmp
        t0 = time.perf_counter()
        write_dataset("bench/hopperlike/synthetic-v0", episodes, "Hopper-v5", 0.0, 1.0, "synthetic", "benchmark")
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = ReplayStore.from_minari("bench/hopperlike/synthetic-v0")
        t_minari = time.perf_counter() - t0
        store.save(os.path.join(tmp, "store.npz"))
        t0 = time.perf_counter()
        ReplayStore.load(os.path.join(tmp, "store.npz"))
        t_npz = time.perf_counter() - t0
    B, K = args.batch, args.context
    g = torch.Generator().manual_seed(0)
    seqrl_rate = rate(lambda: windows(store, B, K, g))
    for ep in episodes:  # the baseline, like CORL, precomputes returns-to-go once per episode
        ep["rtg"] = np.cumsum(ep["rew"][::-1])[::-1]
    lengths = np.array([T] * E)
    cum = np.concatenate([[0], np.cumsum(lengths)])
    naive_rate = rate(lambda: naive_batch(episodes, lengths, cum, B, K, rng))
    print(f"dataset: {E} episodes x {T} steps = {len(store):,} steps, obs 11, act 3")
    print(f"write Minari HDF5 (seqrl.data.minari_io.write_dataset): {t_write:6.1f} s")
    print(f"load from Minari HDF5 (ReplayStore.from_minari):         {t_minari:6.1f} s")
    print(f"load from .npz (ReplayStore.load):                       {t_npz:6.1f} s")
    print(f"sample B={B} K={K}, CPU, 1 thread:")
    print(f"  seqrl samplers.windows    {seqrl_rate * B:12,.0f} windows/s ({seqrl_rate:,.0f} batches/s)")
    print(f"  per-sample loop baseline  {naive_rate * B:12,.0f} windows/s ({naive_rate:,.0f} batches/s)")
    print(f"  ratio                     {seqrl_rate / naive_rate:12.1f} x")


if __name__ == "__main__":
    main()
