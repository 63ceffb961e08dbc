import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; keep one free for the env and data work


def step_through(backbone, x, state, reset=None):
    """`backbone.step` over x (B, T, ...) one step at a time from `state`, applying reset[:, t] (B, T) before
    step t: the recurrent twin of `backbone(x, state, reset=reset)`. Returns (outputs (B, T, ...), state)."""
    ys = []
    for t in range(x.shape[1]):
        if reset is not None:
            state = backbone.reset(state, reset[:, t])
        yt, state = backbone.step(x[:, t], state)
        ys.append(yt)
    return torch.stack(ys, 1), state


def stream_order(store):
    """{stream: its stored rows in storage order}, by a plain loop."""
    out = {}
    starts = list(store.ep_start)
    for k, s in enumerate(store.stream):
        out.setdefault(int(s), []).extend(range(starts[k], starts[k + 1]))
    return out


def make_episodes(lengths, obs_dim=3, act_dim=1, seed=0, final_obs=True):
    rng = np.random.default_rng(seed)
    eps = []
    for T in lengths:
        term = np.zeros(T, bool)
        term[-1] = True
        eps.append({"obs": rng.standard_normal((T + int(final_obs), obs_dim)).astype(np.float32),
                    "act": rng.uniform(-1, 1, (T, act_dim)).astype(np.float32),
                    "rew": rng.standard_normal(T), "term": term, "trunc": np.zeros(T, bool)})
    return eps


@pytest.fixture
def spaces():
    return (gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32))


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


PENDULUM_DATASET = "seqrl/pendulum/fixture-v0"


@pytest.fixture
def dataset(minari_root):
    """A small Pendulum dataset (4 episodes of 50 steps from the scripted controller), written to a fresh Minari
    root: its id."""
    from seqrl.data.collect import pendulum_controller, rollout
    from seqrl.data.minari_io import write_dataset

    eps = rollout(pendulum_controller(0.5, 0), "Pendulum-v1", 200, 2, seed=0, max_episode_steps=50)
    write_dataset(PENDULUM_DATASET, eps, "Pendulum-v1", -1226.0, -149.7, "scripted", "test fixture")
    return PENDULUM_DATASET
