import json
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
from seqrl.data.samplers import sequences, windows, windows_at
from seqrl.data.store import Batch, ReplayStore, space_from_dict, space_to_dict
from seqrl.errors import DataError


def test_derived_columns_match_a_loop(spaces):
    eps = make_episodes([5, 1, 7])
    store = ReplayStore.from_episodes(eps, *spaces)
    assert store.num_episodes == 3 and len(store) == 13 and store.episodes_added == 3
    assert list(store.ep_start) == [0, 5, 6, 13]
    i = 0
    for k, e in enumerate(eps):
        for t in range(len(e["rew"])):
            assert store.column("timestep")[i] == t and store.column("episode")[i] == k
            assert store.column("rtg")[i] == pytest.approx(e["rew"][t:].sum(), abs=1e-5)
            np.testing.assert_array_equal(store.column("obs")[i], e["obs"][t])
            i += 1
        np.testing.assert_array_equal(store.final_obs[k], e["obs"][-1])  # the T+1-th observation is kept
    np.testing.assert_allclose(store.episode_returns, [e["rew"].sum() for e in eps], atol=1e-5)


def test_episodes_need_t_plus_one_observations(spaces):
    with pytest.raises(DataError, match="episode 1: 4 observations for 4 steps; give T\\+1"):
        ReplayStore.from_episodes(make_episodes([3]) + make_episodes([4], final_obs=False), *spaces)


def test_native_observation_dtypes():
    act = gym.spaces.Box(-1, 1, (2,), np.float64)
    rng = np.random.default_rng(0)
    img = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
    eps = [{"obs": rng.integers(0, 256, (T + 1, 4, 4, 3), dtype=np.uint8), "act": rng.uniform(-1, 1, (T, 2)),
            "rew": np.ones(T), "term": np.eye(T, dtype=bool)[-1], "trunc": np.zeros(T, bool)} for T in (3, 5)]
    store = ReplayStore.from_episodes(eps, img, act)
    assert store.column("obs").dtype == np.uint8 and store.final_obs.dtype == np.uint8
    assert store.column("act").dtype == np.float32  # Box actions are float32
    b = windows_at(store, [0, 3], 5)
    assert b.obs.dtype == b.next_obs.dtype == torch.uint8 and b.act.dtype == torch.float32
    np.testing.assert_array_equal(b.obs[1].numpy(), eps[1]["obs"][:5])
    np.testing.assert_array_equal(b.next_obs[1].numpy(), eps[1]["obs"][1:])
    mean, std = store.obs_stats()  # an image is scaled to [0, 1] by the tokenizer, never normalised
    assert mean.shape == std.shape == () and mean == 0 and std == 1
    flat = gym.spaces.Box(0, 255, (48,), np.uint8)  # integer features that are no image are normalised
    store = ReplayStore.from_episodes([dict(e, obs=e["obs"].reshape(-1, 48)) for e in eps], flat, act)
    mean, std = store.obs_stats()  # float64 sums over uint8, no overflow
    wide = store.column("obs").astype(np.float64)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (48,)
    np.testing.assert_allclose(mean, wide.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, wide.std(0) + 1e-6, rtol=1e-5)
    for dtype, stored in ((np.float64, np.float32), (np.int16, np.int16), (np.float16, np.float16)):
        sp = gym.spaces.Box(-10, 10, (2,), dtype)
        e = {"obs": np.arange(8).reshape(4, 2).astype(dtype), "act": np.zeros((3, 2)), "rew": np.ones(3),
             "term": np.zeros(3, bool), "trunc": np.zeros(3, bool)}
        s = ReplayStore.from_episodes([e], sp, act)
        assert s.column("obs").dtype == stored and s.final_obs.tolist() == [[6, 7]]
        assert space_from_dict(space_to_dict(sp)).dtype == dtype  # spaces keep their dtype through JSON
    bad = dict(eps[0], obs=eps[0]["obs"].astype(np.float64) + 0.5)
    with pytest.raises(DataError, match="observations are not whole numbers, the space holds uint8"):
        ReplayStore.from_episodes([bad], img, act)
    bad["obs"] = bad["obs"] - 0.5 + 100
    with pytest.raises(DataError, match="observations outside uint8"):
        ReplayStore.from_episodes([bad], img, act)


def test_discrete_spaces():
    obs_space, act_space = gym.spaces.Discrete(5), gym.spaces.Discrete(3)
    eps = [{"obs": np.array([0, 1, 2, 3]), "act": np.array([0, 2, 1]), "rew": np.ones(3),
            "term": np.array([0, 0, 1], bool), "trunc": np.zeros(3, bool)}]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    b = windows_at(store, [0], 4)
    assert b.obs.dtype == torch.int64 and b.act.tolist() == [[0, 2, 1, 0]]
    assert b.next_obs.tolist() == [[1, 2, 3, 0]] and store.final_obs.tolist() == [3]
    eps[0]["act"] = np.array([0, 3, 1])
    with pytest.raises(DataError, match="actions outside Discrete"):
        ReplayStore.from_episodes(eps, obs_space, act_space)


def traced(lengths, first=0, seed=0):
    """Episodes whose observation feature 0 is each step's global index (from `first`), streams cycling 0-2."""
    eps = make_episodes(lengths, seed=seed)
    for i, e in enumerate(eps):
        T = len(e["rew"])
        e["obs"][:, 0] = np.arange(first, first + T + 1)
        e["obs"][-1, 1] = -1.0  # the final observation is told apart from the next episode's first
        e["term"][-1], e["trunc"][-1] = i % 2 == 0, i % 2 == 1
        e["stream"] = i % 3
        e["meta"] = {"seed": first, "tag": ["x", i]}
        first += T
    return eps


def test_capacity_evicts_whole_episodes_like_a_trimmed_list(spaces):
    rng = np.random.default_rng(3)
    cap = 30
    store, ref, first, added, wrapped = ReplayStore(*spaces, capacity=cap), [], 0, 0, False
    while added < 60:
        chunk = traced(rng.integers(1, 13, rng.integers(1, 5)), first, seed=added)
        first += sum(len(e["rew"]) for e in chunk)
        added += len(chunk)
        store.extend(chunk)
        ref += chunk
        while sum(len(e["rew"]) for e in ref) > cap:  # the reference: drop the oldest episode by hand
            ref.pop(0)
        wrapped |= store._steps.head % store._steps.size + len(store) > store._steps.size
        assert store.episodes_added == added and store.num_episodes == len(ref)
        assert len(store) == sum(len(e["rew"]) for e in ref) <= cap
        assert list(store.episode_lengths) == [len(e["rew"]) for e in ref]
        assert list(store.ep_start) == list(np.r_[0, np.cumsum([len(e["rew"]) for e in ref])])
        assert list(store.stream) == [e["stream"] for e in ref] and store.episode_meta == [e["meta"] for e in ref]
        np.testing.assert_array_equal(store.column("obs"), np.concatenate([e["obs"][:-1] for e in ref]))
        np.testing.assert_array_equal(store.final_obs, np.stack([e["obs"][-1] for e in ref]))
        np.testing.assert_array_equal(store.column("term"), np.concatenate([e["term"] for e in ref]))
        np.testing.assert_array_equal(store.column("timestep"), np.concatenate([np.arange(len(e["rew"])) for e in ref]))
        np.testing.assert_allclose(store.column("rtg"), np.concatenate([np.cumsum(e["rew"][::-1])[::-1] for e in ref]),
                                   atol=1e-5)
        np.testing.assert_allclose(store.episode_returns, [e["rew"].sum() for e in ref], atol=1e-5)
        b = windows_at(store, np.arange(len(store)), 1)  # every stored step, sampled after eviction
        np.testing.assert_array_equal(b.obs[:, 0].numpy(), store.column("obs"))
    assert wrapped  # the step ring did wrap around its end


def test_an_episode_longer_than_the_capacity_is_refused(spaces):
    store = ReplayStore.from_episodes(make_episodes([4, 6]), *spaces, capacity=12)
    with pytest.raises(DataError, match="episode 3 has 13 steps, more than the store's capacity of 12 steps"):
        store.extend(make_episodes([2, 13]))
    assert len(store) == 10 and store.episodes_added == 2  # a failed append changes nothing
    with pytest.raises(DataError, match="capacity"):
        ReplayStore(*spaces, capacity=0)


def test_online_append_updates_samples(spaces):
    store = ReplayStore(*spaces)
    for i, e in enumerate(make_episodes([4] * 50)):
        store.add_episode(e["obs"], e["act"], e["rew"], e["term"], e["trunc"], stream=i // 10, meta={"i": i})
        if i == 3:
            windows(store, 2, 2)  # the sampling view is rebuilt after later appends
    assert len(store) == 200 and store.num_episodes == 50 and store.episode_meta[-1] == {"i": 49}
    b = windows_at(store, [199], 1)
    np.testing.assert_array_equal(b.obs[0, 0].numpy(), store.column("obs")[199])
    assert b.stream.tolist() == [[4]]


@pytest.mark.parametrize("field,where", [("obs", "observations"), ("rew", "rewards"), ("act", "actions")])
def test_nan_and_inf_are_rejected(spaces, field, where):
    eps = make_episodes([4, 4])
    eps[1][field] = eps[1][field].astype(np.float64)
    eps[1][field][2] = np.nan if field != "act" else np.inf
    with pytest.raises(DataError, match=f"{where}.*NaN or inf"):
        ReplayStore.from_episodes(eps, *spaces)


def test_empty_zero_step_and_bad_extras(spaces):
    with pytest.raises(DataError, match="empty"):
        ReplayStore.from_episodes([], *spaces)
    eps = make_episodes([3, 1])
    eps[1] = {k: v[:0] for k, v in eps[1].items()}
    with pytest.raises(DataError, match="episode 1 has zero steps"):
        ReplayStore.from_episodes(eps, *spaces)
    eps = make_episodes([3])
    with pytest.raises(DataError, match="episode 0: meta is not JSON"):
        ReplayStore.from_episodes([dict(eps[0], meta={"x": object()})], *spaces)
    with pytest.raises(DataError, match="episode 0: stream must be an int"):
        ReplayStore.from_episodes([dict(eps[0], stream="a")], *spaces)


def test_pieces_continue_their_episodes(tmp_path, spaces):
    # two envs' episodes in pieces, as the env source appends them: env 0's 7 steps as 3 + 4, env 1's 6 as 2 + 4
    a, b = make_episodes([7, 6])
    a["term"][-1], a["trunc"][-1], b["term"][-1], b["trunc"][-1] = True, False, False, True

    def piece(e, lo, hi, stream):
        end = hi == len(e["rew"])
        return {"obs": e["obs"][lo : hi + 1], "act": e["act"][lo:hi], "rew": e["rew"][lo:hi], "stream": stream,
                "term": e["term"][lo:hi] & end, "trunc": e["trunc"][lo:hi] & end, "t0": lo}

    store = ReplayStore(*spaces)
    store.extend([piece(a, 0, 3, 0), piece(b, 0, 2, 1)])
    store.extend([piece(a, 3, 7, 0), piece(b, 2, 6, 1)])
    assert store.t0.tolist() == [0, 0, 3, 2] and store.episode_lengths.tolist() == [3, 2, 4, 4]
    assert store.column("timestep").tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 6, 2, 3, 4, 5]
    assert store.column("term").sum() == 1 and store.column("trunc").sum() == 1  # only the true ends
    # 7-step sequences fit env 0's stream only, from its start: its episode across the pieces, one start marked
    seq = sequences(store, 8, 7, torch.Generator().manual_seed(0))
    assert (seq.stream == 0).all() and (seq.first == torch.tensor([True] + [False] * 6)).all()
    assert torch.equal(seq.obs, torch.from_numpy(a["obs"][:7]).expand(8, 7, 3))
    back = ReplayStore.load(store.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.t0, store.t0)
    np.testing.assert_array_equal(back.column("timestep"), store.column("timestep"))
    # a file written before pieces existed has no t0: whole episodes
    with np.load(tmp_path / "s.npz") as z:
        arrays = {k: v for k, v in z.items() if k != "t0"}
    np.savez(tmp_path / "old.npz", **arrays)
    assert ReplayStore.load(tmp_path / "old.npz").t0.tolist() == [0, 0, 0, 0]
    for bad in (-1, 1.5):
        with pytest.raises(DataError, match="episode 4: t0 must be a non-negative int"):
            store.extend([dict(piece(a, 0, 3, 0), t0=bad)])
    assert store.num_episodes == 4  # a refused append changes nothing


def test_shape_mismatch(spaces):
    with pytest.raises(DataError, match="shape"):
        ReplayStore.from_episodes(make_episodes([3], obs_dim=4), *spaces)


def test_batch_to_and_split(spaces):
    store = ReplayStore.from_episodes(make_episodes([10, 10]), *spaces)
    b = windows_at(store, [0, 5, 10, 15], 3)
    half = b.split(2, 1)
    assert isinstance(half, Batch) and half.obs.shape == (2, 3, 3)
    assert torch.equal(half.timestep, b.timestep[2:]) and torch.equal(half.next_obs, b.next_obs[2:])
    assert torch.equal(b.to("cpu").stream, b.stream)


def test_save_load_roundtrip_after_eviction(tmp_path, spaces):
    store = ReplayStore(*spaces, meta={"dataset_id": "x/y-v0", "ref_min_score": 1.0}, capacity=25)
    store.extend(traced([7, 9, 4, 8, 6]))  # 34 steps: the first two episodes go
    store.extend(traced([5], first=100))
    back = ReplayStore.load(store.save(tmp_path / "s.npz"))
    assert back.meta == store.meta and back.capacity == 25 and back.episodes_added == store.episodes_added == 6
    assert list(back.stream) == list(store.stream) and back.episode_meta == store.episode_meta
    np.testing.assert_array_equal(back.final_obs, store.final_obs)
    np.testing.assert_array_equal(back.ep_start, store.ep_start)
    for k in ("obs", "act", "rew", "rtg", "timestep", "term", "trunc", "episode"):
        np.testing.assert_array_equal(back.column(k), store.column(k))
    more = traced([9], first=200)
    store.extend(more)
    back.extend(more)  # the loaded store evicts as the original does
    assert back.num_episodes == store.num_episodes == 3
    np.testing.assert_array_equal(back.column("obs"), store.column("obs"))


def test_old_and_inconsistent_store_files(tmp_path, spaces):
    path = tmp_path / "old.npz"
    header = {"format": 1, "observation_space": space_to_dict(spaces[0]), "action_space": space_to_dict(spaces[1]),
              "meta": {}}
    np.savez(path, obs=np.zeros((3, 3), np.float32), header=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(DataError, match="has format 1, this seqrl reads 2: rebuild it"):
        ReplayStore.load(path)
    path = ReplayStore.from_episodes(make_episodes([3, 4]), *spaces).save(tmp_path / "s.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["final_obs"] = arrays["final_obs"][:1]
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="inconsistent"):
        ReplayStore.load(path)


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
ep = {"obs": np.full((T + 1, 64), 2.0, np.float32), "act": np.zeros((T, 8), np.float32), "rew": np.ones(T),
      "term": np.zeros(T, bool), "trunc": np.zeros(T, bool)}
s = ReplayStore.from_episodes([ep], *sp, meta={"version": 2})
print("ready", flush=True)
while True:
    s.save(sys.argv[1])
"""


def test_killed_writer_leaves_previous_store_loadable(tmp_path):
    sp = (gym.spaces.Box(-np.inf, np.inf, (64,), np.float32), gym.spaces.Box(-1, 1, (8,), np.float32))
    T = 10
    ep = {"obs": np.ones((T + 1, 64), np.float32), "act": np.zeros((T, 8), np.float32), "rew": np.ones(T),
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
