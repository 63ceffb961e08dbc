import gymnasium as gym
import minari
import numpy as np
import pytest

from conftest import make_episodes
from seqrl.data import minari_io
from seqrl.data.minari_io import check_env_matches, dataset_exists, load_store, read_episodes, write_dataset
from seqrl.data.store import ReplayStore
from seqrl.errors import DataError


def pendulum_episodes(lengths, seed=0):
    """Random episodes inside Pendulum-v1's spaces (cos, sin in [-1, 1]; torque in [-2, 2])."""
    eps = make_episodes(lengths, obs_dim=3, act_dim=1, seed=seed)
    for e in eps:
        e["obs"][:, :2] = np.clip(e["obs"][:, :2], -1, 1)
        e["act"] = np.clip(e["act"], -2, 2)
    return eps


def test_write_then_load(minari_root):
    eps = pendulum_episodes([5, 9, 3])
    write_dataset("seqrl/pendulum/test-v0", eps, "Pendulum-v1", -1000.0, -100.0, "test", "unit test")
    store = ReplayStore.from_minari("seqrl/pendulum/test-v0")
    assert store.num_episodes == 3 and len(store) == 17
    np.testing.assert_allclose(store.column("obs")[5:14], eps[1]["obs"][:9])
    np.testing.assert_allclose(store.final_obs, [e["obs"][-1] for e in eps])  # the T+1-th observations
    assert list(store.stream) == [0, 0, 0] and store.episode_meta == [{}, {}, {}]
    assert store.meta == {"dataset_id": "seqrl/pendulum/test-v0", "env_id": "Pendulum-v1",
                          "ref_min_score": -1000.0, "ref_max_score": -100.0}
    # our normalised score is Minari's (x100)
    ds = minari.load_dataset("seqrl/pendulum/test-v0")
    returns = np.array([-550.0, -100.0])
    from seqrl.runners.evaluate import normalized_score

    np.testing.assert_allclose(normalized_score(returns, (-1000.0, -100.0)), 100 * minari.get_normalized_score(ds, returns))
    with pytest.raises(DataError, match="already exists"):
        write_dataset("seqrl/pendulum/test-v0", eps, "Pendulum-v1", 0.0, 1.0, "test", "again")


def test_missing_dataset_says_how_to_make_it(minari_root):
    with pytest.raises(DataError, match="seqrl collect --env hopper --quality medium"):
        load_store("seqrl/hopper/medium-v0")
    with pytest.raises(DataError, match="minari download D4RL/door/human-v2"):
        load_store("D4RL/door/human-v2")


def test_truncated_dataset_file(minari_root):
    write_dataset("seqrl/pendulum/trunc-v0", pendulum_episodes([50] * 4), "Pendulum-v1", 0.0, 1.0, "t", "t")
    f = minari_root / "seqrl/pendulum/trunc-v0/data/main_data.hdf5"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_store("seqrl/pendulum/trunc-v0")


def test_spaces_must_match_the_env(minari_root):
    write_dataset("seqrl/pendulum/sp-v0", pendulum_episodes([4]), "Pendulum-v1", 0.0, 1.0, "t", "t")
    store = load_store("seqrl/pendulum/sp-v0")
    check_env_matches(store, "Pendulum-v1")
    with pytest.raises(DataError, match="recorded on Pendulum-v1, not on CartPole-v1"):  # the ids first
        check_env_matches(store, "CartPole-v1")
    env = gym.make("CartPole-v1")
    with pytest.raises(DataError, match="observation space .* does not match CartPole-v1"):
        check_env_matches(store, env)  # an env object: its spaces
    env.close()


def test_bad_episodes_are_refused_and_leave_no_dataset(minari_root):
    eps = pendulum_episodes([4, 4])
    eps[1]["rew"][0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_dataset("seqrl/pendulum/nan-v0", eps, "Pendulum-v1", 0.0, 1.0, "t", "t")
    assert not dataset_exists("seqrl/pendulum/nan-v0")
    with pytest.raises(DataError, match="no episodes"):
        write_dataset("seqrl/pendulum/none-v0", [], "Pendulum-v1", 0.0, 1.0, "t", "t")


def test_crash_during_write_keeps_the_id_free(minari_root, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C half way through Minari's write

    with monkeypatch.context() as m:
        m.setattr(minari, "create_dataset_from_buffers", boom)
        with pytest.raises(KeyboardInterrupt):
            write_dataset("seqrl/pendulum/crash-v0", pendulum_episodes([4]), "Pendulum-v1", 0.0, 1.0, "t", "t")
    assert not dataset_exists("seqrl/pendulum/crash-v0")
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".seqrl-tmp")]
    write_dataset("seqrl/pendulum/crash-v0", pendulum_episodes([4]), "Pendulum-v1", 0.0, 1.0, "t", "t")
    assert len(load_store("seqrl/pendulum/crash-v0")) == 4


def test_datasets_root_follows_the_variable(minari_root):
    assert minari_io.datasets_root() == minari_root


def test_streams_and_episode_meta_round_trip(minari_root):
    eps = pendulum_episodes([4, 6, 3, 5])
    metas = [{"task": 3, "seed": 11}, {}, {"goal": [1, 2], "name": "b"}, {"task": 3, "seed": 12}]
    for e, s, m in zip(eps, [3, 3, 7, 3], metas):
        e["stream"], e["meta"] = s, m
    write_dataset("seqrl/pendulum/streams-v0", eps, "Pendulum-v1", 0.0, 1.0, "t", "t")
    store = load_store("seqrl/pendulum/streams-v0")
    assert list(store.stream) == [3, 3, 7, 3] and store.episode_meta == metas
    episodes, _, _ = read_episodes("seqrl/pendulum/streams-v0")  # what composite datasets are built from
    assert [e["stream"] for e in episodes] == [3, 3, 7, 3] and [e["meta"] for e in episodes] == metas
    ds = minari.load_dataset("seqrl/pendulum/streams-v0")  # plain Minari sees them as episode metadata
    assert [int(m["seqrl_stream"]) for m in ds.storage.get_episode_metadata(ds.episode_indices)] == [3, 3, 7, 3]
    assert ds.storage.metadata["jpeg_encoding"] is False


def test_datasets_written_without_streams_load_as_stream_0(minari_root):
    from minari.data_collector import EpisodeBuffer

    eps = pendulum_episodes([4, 5])
    buffers = [EpisodeBuffer(id=i, observations=e["obs"], actions=e["act"], rewards=e["rew"], terminations=e["term"],
                             truncations=e["trunc"]) for i, e in enumerate(eps)]
    minari.create_dataset_from_buffers("seqrl/pendulum/plain-v0", buffers, env="Pendulum-v1", algorithm_name="t",
                                       author="t", author_email="t@t", code_permalink="t", ref_min_score=0.0,
                                       ref_max_score=1.0, description="t", data_format="hdf5")
    store = load_store("seqrl/pendulum/plain-v0")
    assert len(store) == 9 and list(store.stream) == [0, 0] and store.episode_meta == [{}, {}]


def test_bad_stream_or_meta_is_refused(minari_root):
    eps = pendulum_episodes([4])
    eps[0]["meta"] = {"x": float("nan")}
    with pytest.raises(DataError, match="episode 0: meta is not JSON"):
        write_dataset("seqrl/pendulum/meta-v0", eps, "Pendulum-v1", 0.0, 1.0, "t", "t")
    eps[0]["meta"], eps[0]["stream"] = {}, 1.5
    with pytest.raises(DataError, match="episode 0: stream must be an int"):
        write_dataset("seqrl/pendulum/meta-v0", eps, "Pendulum-v1", 0.0, 1.0, "t", "t")
    assert not dataset_exists("seqrl/pendulum/meta-v0")
