import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.data.store import ReplayStore
from seqrl.errors import DataError


def test_derived_columns_match_a_loop(spaces):
    eps = make_episodes([5, 1, 7])
    store = ReplayStore.from_episodes(eps, *spaces)
    assert store.num_episodes == 3 and len(store) == 13
    assert list(store.ep_start) == [0, 5, 6, 13]
    i = 0
    for e in eps:
        for t in range(len(e["rew"])):
            assert store.column("timestep")[i] == t
            assert store.column("rtg")[i] == pytest.approx(e["rew"][t:].sum(), abs=1e-5)
            np.testing.assert_array_equal(store.column("obs")[i], e["obs"][t])
            i += 1
    np.testing.assert_allclose(store.episode_returns, [e["rew"].sum() for e in eps], atol=1e-5)


def traced_store(spaces, lengths, streams=None):
    """A store whose observation feature 0 is each step's global index, to trace window positions."""
    eps = make_episodes(lengths)
    offset = 0
    for i, e in enumerate(eps):
        T = len(e["rew"])
        e["obs"][:T, 0] = np.arange(offset, offset + T)
        e["term"][-1] = i % 2 == 0  # some episodes end terminated, some truncated
        e["trunc"][-1] = i % 2 == 1
        e["stream"] = 0 if streams is None else streams[i]
        offset += T
    return ReplayStore.from_episodes(eps, *spaces)


def check_against_columns(store, b):
    """Every real position of every field equals the store's column at that step; padding is zero."""
    idx = b.obs[..., 0].long()
    m = b.mask
    for name, col in (("obs", "obs"), ("act", "act"), ("rew", "rew"), ("rtg", "rtg"), ("timestep", "timestep"),
                      ("done", "term")):
        got = getattr(b, name)
        want = torch.from_numpy(store.column(col))[idx]
        assert torch.equal(got[m], want[m]), name
        assert (got[~m] == 0).all(), name
    ep = torch.from_numpy(store.column("episode"))[idx]
    assert torch.equal(b.timestep[m], (idx - torch.from_numpy(store.ep_start)[ep])[m])
    assert torch.equal(b.first, (b.timestep == 0) & m)
    return idx, ep


def test_windows_never_cross_an_episode_unmasked(spaces):
    store = traced_store(spaces, [3, 8, 2, 11, 1])
    b = store.sample_windows(512, 6, torch.Generator().manual_seed(0))
    assert b.obs.shape == (512, 6, 3) and b.act.shape == (512, 6, 1) and b.mask.shape == (512, 6)
    idx, ep = check_against_columns(store, b)
    ep_end = torch.from_numpy(store.ep_start[1:])
    assert b.mask[:, 0].all() and (b.mask[:, 1:] <= b.mask[:, :-1]).all()  # real steps form a prefix
    for w in range(512):
        real = idx[w][b.mask[w]]
        assert (ep[w][b.mask[w]] == ep[w, 0]).all()  # every real step is of the first step's episode
        assert (real == real[0] + torch.arange(len(real))).all()  # consecutive
        if not b.mask[w].all():  # padding starts exactly where the episode ends
            assert real[-1] + 1 == ep_end[ep[w, 0]]


def test_histories_follow_the_columns(spaces):
    store = traced_store(spaces, [3, 4, 2, 5, 3], streams=[0, 0, 0, 1, 1])
    b = store.sample_histories(256, 7, torch.Generator().manual_seed(2))
    idx, _ = check_against_columns(store, b)
    stream_of_step = torch.from_numpy(store.stream[store.column("episode")])
    for w in range(256):
        real = idx[w][b.mask[w]]
        assert (real == real[0] + torch.arange(len(real))).all()
        assert (stream_of_step[real] == stream_of_step[real[0]]).all()  # never into another stream
    assert (b.first & b.mask).sum() > 0 and (b.first[:, 1:]).any()  # episode starts inside windows


def test_windows_at_known_positions(spaces):
    eps = make_episodes([4, 6])
    store = ReplayStore.from_episodes(eps, *spaces)
    b = store.windows_at([2, 4, 9], 3)
    assert b.mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    np.testing.assert_array_equal(b.obs[1].numpy(), eps[1]["obs"][:3])
    assert b.first.tolist() == [[False, False, False], [True, False, False], [False, False, False]]


def test_histories_run_across_episodes_of_one_stream(spaces):
    eps = make_episodes([3, 3, 3, 3])
    for e, s in zip(eps, [0, 0, 1, 1]):
        e["stream"] = s
    store = ReplayStore.from_episodes(eps, *spaces)
    b = store._gather(torch.tensor([1, 4]), 6, store._tensors()["stream_end"][torch.tensor([1, 4])])
    # from step 1 the stream (episodes 0,1) ends at step 6: 5 real steps, the episode start at 3 is marked
    assert b.mask.tolist()[0] == [True] * 5 + [False]
    assert b.first.tolist()[0] == [False, False, True, False, False, False]
    assert b.mask.tolist()[1] == [True, True, False, False, False, False]


def test_online_append_grows_and_samples(spaces):
    store = ReplayStore(*spaces)
    for i, e in enumerate(make_episodes([4] * 50)):
        store.add_episode(e["obs"], e["act"], e["rew"], e["term"], e["trunc"])
        if i == 3:
            store.sample_windows(2, 2)  # device copy is rebuilt after later appends
    assert len(store) == 200 and store.num_episodes == 50
    b = store.windows_at([199], 1)
    np.testing.assert_array_equal(b.obs[0, 0].numpy(), store.column("obs")[199])


def test_stats(spaces):
    store = ReplayStore.from_episodes(make_episodes([50, 50]), *spaces)
    mean, std = store.obs_stats()
    np.testing.assert_allclose(mean, store.column("obs").mean(0), atol=1e-5)
    assert std.shape == (3,) and (std > 0).all()
    assert store.return_stats()["max"] >= store.return_stats()["min"]


def test_discrete_spaces():
    obs_space, act_space = gym.spaces.Discrete(5), gym.spaces.Discrete(3)
    eps = [{"obs": np.array([0, 1, 2, 3]), "act": np.array([0, 2, 1]), "rew": np.ones(3),
            "term": np.array([0, 0, 1], bool), "trunc": np.zeros(3, bool)}]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    b = store.windows_at([0], 4)
    assert b.obs.dtype == torch.int64 and b.act.tolist() == [[0, 2, 1, 0]]
    eps[0]["act"] = np.array([0, 3, 1])
    with pytest.raises(DataError, match="actions outside Discrete"):
        ReplayStore.from_episodes(eps, obs_space, act_space)


@pytest.mark.parametrize("field,where", [("obs", "observations"), ("rew", "rewards"), ("act", "actions")])
def test_nan_and_inf_are_rejected(spaces, field, where):
    eps = make_episodes([4, 4])
    eps[1][field] = eps[1][field].astype(np.float64)
    eps[1][field][2] = np.nan if field != "act" else np.inf
    with pytest.raises(DataError, match=f"{where}.*NaN or inf"):
        ReplayStore.from_episodes(eps, *spaces)


def test_empty_and_zero_step_episodes(spaces):
    with pytest.raises(DataError, match="empty"):
        ReplayStore.from_episodes([], *spaces)
    eps = make_episodes([3, 1])
    eps[1] = {k: v[:0] for k, v in eps[1].items()}
    with pytest.raises(DataError, match="episode 1 has zero steps"):
        ReplayStore.from_episodes(eps, *spaces)


def test_shape_mismatch(spaces):
    with pytest.raises(DataError, match="shape"):
        ReplayStore.from_episodes(make_episodes([3], obs_dim=4), *spaces)


def test_save_load_roundtrip(tmp_path, spaces):
    eps = make_episodes([3, 9, 4])
    eps[2]["stream"] = 7
    store = ReplayStore.from_episodes(eps, *spaces, meta={"dataset_id": "x/y-v0", "ref_min_score": 1.0})
    path = store.save(tmp_path / "s.npz")
    back = ReplayStore.load(path)
    assert back.meta == store.meta and list(back.stream) == [0, 0, 7]
    for k in ("obs", "act", "rew", "rtg", "timestep", "term"):
        np.testing.assert_array_equal(back.column(k), store.column(k))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_store_file(tmp_path, spaces, damage):
    path = ReplayStore.from_episodes(make_episodes([30, 30]), *spaces).save(tmp_path / "s.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    with pytest.raises(DataError, match="corrupt or truncated"):
        ReplayStore.load(path)


WRITER = """
import sys, numpy as np, gymnasium as gym
from seqrl.data.store import ReplayStore
sp = (gym.spaces.Box(-np.inf, np.inf, (64,), np.float32), gym.spaces.Box(-1, 1, (8,), np.float32))
T = 200_000
ep = {"obs": np.full((T, 64), 2.0, np.float32), "act": np.zeros((T, 8), np.float32), "rew": np.ones(T),
      "term": np.zeros(T, bool), "trunc": np.zeros(T, bool)}
s = ReplayStore.from_episodes([ep], *sp, meta={"version": 2})
print("ready", flush=True)
while True:
    s.save(sys.argv[1])
"""


def test_killed_writer_leaves_previous_store_loadable(tmp_path):
    sp = (gym.spaces.Box(-np.inf, np.inf, (64,), np.float32), gym.spaces.Box(-1, 1, (8,), np.float32))
    T = 10
    ep = {"obs": np.ones((T, 64), np.float32), "act": np.zeros((T, 8), np.float32), "rew": np.ones(T),
          "term": np.zeros(T, bool), "trunc": np.zeros(T, bool)}
    path = ReplayStore.from_episodes([ep], *sp, meta={"version": 1}).save(tmp_path / "s.npz")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # the 50 MB save is under way: kill it mid-write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    back = ReplayStore.load(path)  # the old version or a complete new one, never a torn file
    assert back.meta["version"] in (1, 2)
    assert len(back) in (10, 200_000)
