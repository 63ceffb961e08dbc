"""seqrl.data.sb3: D4RL recipe on a tiny SB3 budget (InvertedPendulum-v5, SAC, 300 env steps)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC

from seqrl.cpu import torch_threads
from seqrl.data.sb3 import _refill, medium_step, replay_episodes, sb3_episodes, train
from seqrl.errors import DataError, PresetError
from seqrl.presets import load_env

TRAIN, EVERY, N_STEPS = 300, 100, 120


def tiny_env(**collect):
    env = load_env("hopper")
    c = dict(algo="SAC", train_steps=TRAIN, train_envs=1, checkpoint_every=EVERY, n_steps=N_STEPS, n_envs=2,
             checkpoint_eval_episodes=1)
    c.update(collect)
    return dataclasses.replace(env, name="ip-test", env_id="InvertedPendulum-v5", dataset_prefix="seqrl/ip-test",
                               max_episode_steps=50, collect=dataclasses.replace(env.collect, **c))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets train far faster on one thread; several threads on a busy 2-core box crawl."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir as collect.collect passes it, the run folder) after one full training."""
    base = tmp_path_factory.mktemp("collect")
    return base, train(tiny_env(), 0, base / "ip-test")


def files(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def check_episodes(eps, min_steps):
    assert eps and sum(len(e["rew"]) for e in eps) >= min_steps
    for e in eps:
        T = len(e["rew"])
        assert T > 0 and e["obs"].shape == (T + 1, 4) and e["act"].shape == (T, 1) and e["act"].dtype == np.float32
        assert e["rew"].shape == e["term"].shape == e["trunc"].shape == (T,)
        assert e["term"].dtype == e["trunc"].dtype == bool
        assert e["term"][-1] or e["trunc"][-1]  # whole episodes only
        assert not (e["term"][:-1] | e["trunc"][:-1]).any()
        assert np.isfinite(e["obs"]).all() and (np.abs(e["act"]) <= 3.0).all()  # InvertedPendulum: [-3, 3]


@pytest.mark.parametrize("quality", ["random", "expert", "medium"])
def test_rollout_qualities(trained, quality):
    base, run = trained
    before = files(run)
    check_episodes(sb3_episodes(tiny_env(), quality, 0, base / "ip-test"), N_STEPS)
    assert all(files(run)[name] == t for name, t in before.items())  # no retraining


def test_medium_rollout_is_reproducible(trained):
    """The same checkpoint and seed give the same dataset (a lease can rebuild it from the checkpoints alone);
    another seed gives another."""
    base, _ = trained
    torch.manual_seed(123)  # whatever the global generator held before
    a = sb3_episodes(tiny_env(), "medium", 0, base / "ip-test")
    torch.manual_seed(456)
    b = sb3_episodes(tiny_env(), "medium", 0, base / "ip-test")
    c = sb3_episodes(tiny_env(), "medium", 1, base / "ip-test")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["act"], c[0]["act"])


def test_medium_is_closest_to_a_third_of_final(trained):
    base, run = trained
    sb3_episodes(tiny_env(), "medium", 0, base / "ip-test")
    evals = {int(s): r for s, r in json.loads((run / "evals.json").read_text()).items()}
    assert sorted(evals) == [100, 200, 300]
    target = tiny_env().collect.medium_fraction * evals[300]
    assert min(evals, key=lambda s: (abs(evals[s] - target), s)) == medium_step(tiny_env(), 0, run)


def test_medium_replay_stops_at_medium_checkpoint(trained):
    base, run = trained
    eps = sb3_episodes(tiny_env(), "medium-replay", 0, base / "ip-test")
    check_episodes(eps, 1)
    m = medium_step(tiny_env(), 0, run)
    assert sum(len(e["rew"]) for e in eps) <= m
    allowed, later = set(), set()
    for p in run.glob("chunk_*.npz"):
        with np.load(p) as z:
            for obs, step in zip(z["obs"], z["step"]):
                (allowed if step <= m else later).add(obs.tobytes())
    assert all(o.tobytes() in allowed for e in eps for o in e["obs"][:-1])
    if m < TRAIN:  # the full replay has more episodes than the medium one
        assert len(replay_episodes(run, TRAIN)) > len(eps)


def test_resume_continues_from_newest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    run = train(tiny_env(train_steps=200), 0, tmp_path)  # "interrupted" after step 200
    assert not list((tmp_path / "tmp").glob("SB3-*"))  # SB3's default logger would leave a folder there
    before = files(run)
    assert sorted(before) == ["chunk_100.npz", "chunk_200.npz", "model_100.zip", "model_200.zip"]
    assert train(tiny_env(), 0, tmp_path) == run
    after = files(run)
    assert {n: after[n] for n in ("chunk_100.npz", "chunk_200.npz", "model_100.zip", "model_200.zip")} == \
           {n: before[n] for n in ("chunk_100.npz", "chunk_200.npz", "model_100.zip", "model_200.zip")}
    assert sorted(after) == ["chunk_100.npz", "chunk_200.npz", "chunk_300.npz", "model_100.zip", "model_200.zip",
                             "model_300.zip"]  # no SB3 replay file: it holds all buffer_size rows
    assert SAC.load(run / "model_300.zip").num_timesteps == 300
    with np.load(run / "chunk_300.npz") as z:  # only the last 100 steps were collected again
        assert len(z["step"]) == 100 and z["step"].min() == 201 and z["step"].max() == 300
    train(tiny_env(), 0, tmp_path)  # finished: nothing to do
    assert files(run) == after


def test_learner_on_several_envs(tmp_path):
    """collect.train_envs: SAC collects from 2 envs, one gradient step per env step; checkpoints, the recorded
    transitions and the medium-replay episodes are those of one env's run, per env."""
    run = train(tiny_env(train_envs=2), 0, tmp_path)
    assert sorted(p.name for p in run.glob("model_*.zip")) == ["model_100.zip", "model_200.zip", "model_300.zip"]
    model = SAC.load(run / "model_300.zip")
    assert model.n_envs == 2 and model._n_updates == TRAIN - model.learning_starts  # 100 random steps first
    with np.load(run / "chunk_300.npz") as z:
        assert sorted(set(z["env"].tolist())) == [0, 1] and len(z["step"]) == 100
    eps = replay_episodes(run, 300)
    check_episodes(eps, 150)  # whole episodes, each ending where its env's ended (mixed envs would break it)
    assert max(len(e["rew"]) for e in eps) <= 50  # the episode limit: no episode runs into another env's


def test_corrupt_newest_checkpoint_is_skipped(trained, tmp_path):
    _, full = trained
    run = tmp_path / full.relative_to(full.parents[1])
    shutil.copytree(full, run)
    (run / "evals.json").unlink(missing_ok=True)
    data = (run / "model_300.zip").read_bytes()
    (run / "model_300.zip").write_bytes(data[: len(data) // 2])  # a truncated zip
    old = files(run)
    with pytest.warns(UserWarning) as caught:
        assert train(tiny_env(), 0, tmp_path) == run
    messages = " | ".join(str(w.message) for w in caught)
    assert "model_300.zip: corrupt checkpoint" in messages
    new = files(run)
    assert all(new[n] == old[n] for n in ("model_100.zip", "model_200.zip", "chunk_100.npz", "chunk_200.npz"))
    assert new["model_300.zip"] != old["model_300.zip"] and new["chunk_300.npz"] != old["chunk_300.npz"]
    assert SAC.load(run / "model_300.zip").num_timesteps == 300
    buffer = SAC.load(run / "model_300.zip")
    _refill(buffer, run, 300)  # what a resume from step 300 would do: every recorded transition, in order
    assert buffer.replay_buffer.pos == 300
    with np.load(run / "chunk_300.npz") as z:
        # the learner's replay buffer (seqrl.data.sac.DeviceReplayBuffer): one float32 row per transition
        assert np.array_equal(buffer.replay_buffer.rows[200:300, :4].numpy(), z["obs"].astype(np.float32))


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="medium-expert"):
        sb3_episodes(tiny_env(), "medium-expert", 0, tmp_path)
    with pytest.raises(PresetError, match="DQN"):
        sb3_episodes(tiny_env(algo="DQN"), "expert", 0, tmp_path)
    with pytest.raises(PresetError, match="checkpoint_every must be >= 1"):
        load_env("hopper", {"collect": {"checkpoint_every": 0}})
    with pytest.raises(PresetError, match="NoSuchEnv"):
        sb3_episodes(dataclasses.replace(tiny_env(), env_id="NoSuchEnv-v0"), "random", 0, tmp_path)


def test_collect_medium_end_to_end(trained, tmp_path, monkeypatch):
    from seqrl.data.collect import collect
    from seqrl.data.minari_io import load_store
    from seqrl.data.store import same_space

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = tiny_env()
    base, _ = trained
    path = collect(env, "medium", seed=0, workdir=base)  # reuses the trained run under base/ip-test
    assert path == tmp_path / "minari" / "seqrl/ip-test/medium-v0"
    store = load_store(env.dataset_id("medium"))
    probe = gym.make(env.env_id)
    assert same_space(store.observation_space, probe.observation_space)
    assert same_space(store.action_space, probe.action_space)
    probe.close()
    assert len(store) >= N_STEPS
    assert store.meta["ref_min_score"] == pytest.approx(env.ref_min_score)
    assert store.meta["ref_max_score"] == pytest.approx(env.ref_max_score)
    assert store.meta["env_id"] == "InvertedPendulum-v5"
