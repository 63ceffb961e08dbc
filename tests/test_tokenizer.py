import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.data.store import ReplayStore
from seqrl.errors import PresetError
from seqrl.tokenizer import TrajectoryTokenizer


def tokenizer(spaces, layout="R s a"):
    torch.manual_seed(0)
    return TrajectoryTokenizer(layout, *spaces, d_model=8, readout={"action": "s"}, obs_mean=np.ones(3),
                               obs_std=2 * np.ones(3), reward_scale=0.1, max_timestep=50).eval()


def test_layout_interleaves_and_step_matches(spaces):
    store = ReplayStore.from_episodes(make_episodes([6, 4]), *spaces)
    batch = store.windows_at([1, 6], 5)
    tok = tokenizer(spaces)
    out = tok(batch)
    assert out.x.shape == (2, 15, 8) and out.mask.shape == (2, 15)
    assert out.mask[1].tolist() == [True] * 12 + [False] * 3
    for t in range(5):
        for j, (mod, field) in enumerate([("R", "rtg"), ("s", "obs"), ("a", "act")]):
            one = tok.step(mod, getattr(batch, field)[:, t], batch.timestep[:, t])
            torch.testing.assert_close(out.x[:, 3 * t + j], one)
    h = torch.arange(2 * 15 * 8, dtype=torch.float32).view(2, 15, 8)
    heads = out.heads(h)
    torch.testing.assert_close(heads["action"], h[:, 1::3])  # the state tokens


def test_normalisation_is_applied(spaces):
    tok = tokenizer(spaces)
    obs = torch.randn(4, 3)
    t = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(tok.step("s", obs, t), tok.step("s", 1 + 2 * ((obs - 1) / 2), t))
    assert not torch.allclose(tok.step("s", obs, t), tok.step("s", obs + 1, t))


def test_discrete_embeddings():
    spaces = (gym.spaces.Discrete(5), gym.spaces.Discrete(3))
    tok = TrajectoryTokenizer("s a r", *spaces, d_model=4, readout={"action": "s"})
    e = tok.step("a", torch.tensor([0, 2]), torch.zeros(2, dtype=torch.long))
    assert e.shape == (2, 4)


def test_bad_layouts(spaces):
    with pytest.raises(PresetError, match="unknown modality 'x'"):
        TrajectoryTokenizer("R x a", *spaces, d_model=4, readout={})
    with pytest.raises(PresetError, match="lacks"):
        TrajectoryTokenizer("s a", *spaces, d_model=4, readout={"value": "R"})
