import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.data.samplers import windows
from seqrl.data.store import ReplayStore
from seqrl.policies import TaskSpec, policy_class
from seqrl.policies.base import action_loss
from seqrl.policies.dt import DecisionTransformer, DTConfig
from seqrl.presets import load_env


def spec_for(store, **env_changes):
    env = dataclasses.replace(load_env("pendulum"), **env_changes)
    return TaskSpec.from_store(store, env)


def test_action_loss_on_a_hand_made_batch():
    pred = torch.tensor([[[1.0], [0.0], [5.0]]])
    target = torch.tensor([[[0.0], [2.0], [0.0]]])
    mask = torch.tensor([[True, True, False]])
    assert action_loss(pred, target, mask, discrete=False)["loss_action"].item() == pytest.approx((1 + 4) / 2)
    logits = torch.tensor([[[0.0, 10.0], [10.0, 0.0]]])
    out = action_loss(logits, torch.tensor([[1, 1]]), torch.tensor([[True, False]]), discrete=True)
    assert out["loss_action"].item() < 1e-3 and out["action_accuracy"].item() == 1.0


def test_dt_kv_cache_rollout_equals_full_recomputation(spaces):
    """Acting step by step against the KV cache gives the actions that one full forward over the same
    tokens predicts, also past the attention window (the forward then uses the same banded mask)."""
    torch.manual_seed(0)
    store = ReplayStore.from_episodes(make_episodes([40]), *spaces)
    dt = DecisionTransformer(DTConfig(embed_dim=32, n_layers=2, n_heads=2, context_len=4, dropout=0.0),
                             spec_for(store, target_returns=(5.0,))).eval()
    n, T = 3, 11
    obs = torch.randn(n, T, 3)
    rew = torch.randn(n, T)
    state = dt.initial_state(n, "cpu")
    actions = []
    for t in range(T):
        a, state = dt.act(obs[:, t], state)
        actions.append(a)
        state = dt.observe(state, rew[:, t], torch.zeros(n, dtype=torch.bool))
    actions = torch.stack(actions, 1)  # (n, T, 1)
    # full recomputation over the whole token sequence with the transformer's banded mask
    rtg = 5.0 - torch.cat([torch.zeros(n, 1), rew.cumsum(1)[:, :-1]], 1)
    from seqrl.data.store import Batch

    ones = torch.ones(n, T, dtype=torch.bool)
    batch = Batch(obs=obs, next_obs=obs, act=actions, rew=rew, rtg=rtg, timestep=torch.arange(T).expand(n, T),
                  term=~ones, trunc=~ones, first=~ones, mask=ones, stream=torch.zeros(n, T, dtype=torch.long))
    tokens = dt.tokenizer(batch)
    h, _ = dt.backbone(tokens.x, dt.backbone.initial_state(n, "cpu"))
    full = dt.head.to_env(dt.head(tokens.heads(h)["action"]))
    torch.testing.assert_close(actions, full, atol=1e-5, rtol=1e-5)
    # training's forward (3K-1 tokens, fused causal attention) predicts the first K actions the same way
    K = dt.config.context_len
    window = type(batch)(**{f: getattr(batch, f)[:, :K] for f in batch.__dataclass_fields__})
    torch.testing.assert_close(dt.head.to_env(dt.predict(window)), actions[:, :K], atol=1e-5, rtol=1e-5)


def test_dt_resets_finished_envs(spaces):
    torch.manual_seed(0)
    store = ReplayStore.from_episodes(make_episodes([40]), *spaces)
    dt = DecisionTransformer(DTConfig(embed_dim=16, n_layers=1, context_len=3, dropout=0.0), spec_for(store)).eval()
    obs = torch.randn(2, 3)
    s = dt.initial_state(2, "cpu", target_return=7.0)
    a0, s = dt.act(obs, s)
    s = dt.observe(s, torch.tensor([1.0, 1.0]), torch.tensor([False, True]))
    assert s.rtg.tolist() == [6.0, 7.0] and s.t.tolist() == [1, 0]
    a1, s = dt.act(obs, s)
    torch.testing.assert_close(a1[1], a0[1])  # env 1 restarted: same obs, same action as at its start
    assert not torch.allclose(a1[0], a0[0])


@pytest.mark.parametrize("agent", ["dt", "bc"])
def test_policies_fit_a_small_dataset(spaces, agent):
    torch.manual_seed(0)
    eps = make_episodes([30] * 4)
    for e in eps:  # a learnable target: the action is a function of the observation
        e["act"] = np.tanh(e["obs"][:-1, :1])
    store = ReplayStore.from_episodes(eps, *spaces)
    cls = policy_class(agent)
    cfg = cls.Config() if agent == "bc" else DTConfig(embed_dim=32, n_layers=2, context_len=5, dropout=0.0)
    pol = cls(cfg, spec_for(store))
    opt = torch.optim.Adam(pol.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for i in range(150):
        loss = pol.losses(pol.sample(store, 32, g))["loss_action"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first


def test_dt_embedding_init_and_window_anchor_choices(spaces):
    store = ReplayStore.from_episodes(make_episodes([30] * 4), *spaces)
    models = {}
    for init in ("normal", "default"):
        torch.manual_seed(0)
        models[init] = DecisionTransformer(DTConfig(embed_dim=32, n_layers=2, embed_init=init), spec_for(store))
    a, b = (dict(models[k].named_parameters()) for k in ("normal", "default"))
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    # "default" re-initialises exactly the R, s, a embeddings and the action head, to nn.Linear's default
    assert changed == sorted(f"{m}.{p}" for m in ("tokenizer.embed.R", "tokenizer.embed.s", "tokenizer.embed.a",
                                                   "head.out") for p in ("weight", "bias"))
    for k in changed:
        fan_in = b[k.replace("bias", "weight")].shape[1]
        assert b[k].abs().max() <= fan_in ** -0.5 and b[k].abs().max() > 0.5 * fan_in ** -0.5  # U(+-1/sqrt(fan_in))
        if k.endswith("bias"):
            assert (a[k] == 0).all()
        else:
            assert abs(a[k].std().item() - 0.02) < 0.01
    cfg = DTConfig(embed_dim=32, n_layers=2, context_len=6, window_anchor="end")
    dt = DecisionTransformer(cfg, spec_for(store))
    got = dt.sample(store, 64, torch.Generator().manual_seed(3))
    assert torch.equal(got.obs, windows(store, 64, 6, torch.Generator().manual_seed(3), anchor="end").obs)
    assert not torch.equal(got.obs, windows(store, 64, 6, torch.Generator().manual_seed(3)).obs)


def test_infinite_action_bounds_are_refused():
    obs_space, act_space = gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    eps = [{"obs": np.zeros((4, 2), np.float32), "act": np.zeros((3, 1), np.float32), "rew": np.ones(3),
            "term": np.eye(3, dtype=bool)[-1], "trunc": np.zeros(3, bool)}]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    from seqrl.errors import DataError

    with pytest.raises(DataError, match="infinite bounds"):
        DecisionTransformer(DTConfig(embed_dim=8, n_layers=1), spec_for(store))


def test_discrete_dt():
    obs_space, act_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Discrete(3)
    rng = np.random.default_rng(0)
    eps = [{"obs": rng.standard_normal((11, 2)).astype(np.float32), "act": rng.integers(0, 3, 10),
            "rew": np.ones(10), "term": np.eye(10, dtype=bool)[-1], "trunc": np.zeros(10, bool)} for _ in range(3)]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    dt = DecisionTransformer(DTConfig(embed_dim=16, n_layers=1, context_len=4), spec_for(store))
    out = dt.losses(windows(store, 8, 4))
    assert set(out) == {"loss_action", "action_accuracy"} and out["loss_action"].requires_grad
    a, _ = dt.act(torch.randn(5, 2), dt.initial_state(5, "cpu"))
    assert a.dtype == torch.int64 and a.shape == (5,)
