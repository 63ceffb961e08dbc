import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.data.samplers import windows_at
from seqrl.data.store import ReplayStore
from seqrl.errors import PresetError
from seqrl.tokenizer import TrajectoryTokenizer


def tokenizer(spaces, layout="R s a"):
    torch.manual_seed(0)
    return TrajectoryTokenizer(layout, *spaces, d_model=8, readout={"action": "s"}, obs_mean=np.ones(3),
                               obs_std=2 * np.ones(3), reward_scale=0.1, max_timestep=50).eval()


def test_layout_interleaves_and_step_matches(spaces):
    store = ReplayStore.from_episodes(make_episodes([6, 4]), *spaces)
    batch = windows_at(store, [1, 6], 5)
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


def test_observation_token_by_hand(spaces):
    """An observation token recomputed in float64 from the module's weights: (obs - mean) / std per
    feature, the linear embedding, the timestep embedding, LayerNorm. Per-feature statistics (no two
    alike), so a swapped, missing or inverted normalisation misses the tolerance; checked below by the
    same computation with each of those mistakes."""
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 4.0])
    torch.manual_seed(0)
    tok = TrajectoryTokenizer("R s a", *spaces, d_model=8, readout={"action": "s"}, obs_mean=mean, obs_std=std,
                              max_timestep=50).eval()
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(5, 3, generator=g) * 3
    t = torch.tensor([0, 3, 7, 50, 80])  # 80: past max_timestep, clamped to 50
    W, b = tok.embed["s"].weight.double(), tok.embed["s"].bias.double()
    ts, ln = tok.timestep.weight.double(), tok.norm

    def by_hand(z):
        e = z @ W.T + b + ts[t.clamp(max=50)]
        e = (e - e.mean(-1, keepdim=True)) / torch.sqrt(e.var(-1, unbiased=False, keepdim=True) + ln.eps)
        return e * ln.weight.double() + ln.bias.double()

    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    x = obs.double()
    ref = by_hand((x - m) / s)
    out = tok.step("s", obs, t)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    for wrong in (x, x - m, (x - m) * s, (x - s) / m, (x - m.flip(0)) / s.flip(0)):
        assert not torch.allclose(out.double(), by_hand(wrong), atol=1e-3, rtol=1e-3)


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
