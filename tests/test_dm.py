import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.checkpoint import policy_from_checkpoint
from seqrl.data.store import Batch, ReplayStore
from seqrl.errors import PresetError
from seqrl.policies import TaskSpec, policy_class
from seqrl.policies.dm import DecisionMamba, DMConfig, pser_alpha, refine_labels
from seqrl.presets import load_agent, load_env, parse_overrides
from seqrl.data.samplers import windows
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer

SMALL = DMConfig(embed_dim=16, n_layers=2, d_state=4, expand=1, context_len=4, dropout=0.0, pser_steps=100,
                 pser_interval=5)


def spec_for(store, **env_changes):
    return TaskSpec.from_store(store, dataclasses.replace(load_env("pendulum"), **env_changes))


@pytest.fixture
def store(spaces):
    return ReplayStore.from_episodes(make_episodes([30] * 4), *spaces)


def test_shapes_and_loss_terms(store):
    torch.manual_seed(0)
    dm = DecisionMamba(SMALL, spec_for(store))
    batch = windows(store, 6, 4)
    pred = dm.net(batch)
    assert pred["action"].shape == (6, 4, 1) and pred["state"].shape == (6, 4, 3) and pred["rtg"].shape == (6, 4)
    out = dm.losses(batch)
    assert {"loss_action", "loss_state", "loss_rtg", "pser_alpha", "action_error"} <= set(out)
    assert all(out[k].requires_grad for k in out if k.startswith("loss_"))
    assert policy_class("dm") is DecisionMamba


def test_loss_decreases_on_a_tiny_batch(store):
    torch.manual_seed(0)
    dm = DecisionMamba(SMALL, spec_for(store))
    batch = windows(store, 8, 4, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam([p for p in dm.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(60):
        loss = sum(v for k, v in dm.losses(batch).items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first


def test_recurrent_acting_equals_full_recomputation(store):
    """Acting step by step (O(1) per step, across an episode reset) predicts the actions that one forward
    over the same token sequence predicts."""
    torch.manual_seed(0)
    dm = DecisionMamba(SMALL, spec_for(store, target_returns=(5.0,))).eval()
    n, T = 3, 9
    obs, rew = torch.randn(n, T, 3), torch.randn(n, T)
    done = torch.zeros(n, T, dtype=torch.bool)
    done[1, 3] = True  # env 1's first episode ends after step 3
    state, actions = dm.initial_state(n, "cpu"), []
    for t in range(T):
        a, state = dm.act(obs[:, t], state)
        actions.append(a)
        state = dm.observe(state, rew[:, t], done[:, t])
    actions = torch.stack(actions, 1)  # (n, T, 1)
    first = torch.zeros(n, T, dtype=torch.bool)
    first[:, 0] = True
    first[:, 1:] = done[:, :-1]
    rtg, ts = torch.zeros(n, T), torch.zeros(n, T, dtype=torch.long)
    for t in range(T):  # the return-to-go and timestep the policy was given
        rtg[:, t] = torch.where(first[:, t], torch.tensor(5.0), rtg[:, t - 1] - rew[:, t - 1] if t else torch.tensor(5.0))
        ts[:, t] = torch.where(first[:, t], torch.tensor(0), ts[:, t - 1] + 1 if t else torch.tensor(0))
    ones = torch.ones(n, T, dtype=torch.bool)
    batch = Batch(obs=obs, next_obs=obs, act=actions, rew=rew, rtg=rtg, timestep=ts, term=done, trunc=~ones,
                  first=first, mask=ones, stream=torch.zeros(n, T, dtype=torch.long))
    tokens = dm.tokenizer(batch)
    reset = first[:, :, None].expand(n, T, 3).clone()
    reset[:, :, 1:] = False
    h, _ = dm.backbone(tokens.x, dm.backbone.initial_state(n, "cpu"), reset=reset.reshape(n, 3 * T))
    full = dm.head.to_env(dm.head(tokens.heads(h)["action"]))
    torch.testing.assert_close(actions, full, atol=1e-5, rtol=1e-5)
    # and the training-time forward (from a zero state, no resets) on a trajectory without resets
    torch.testing.assert_close(dm.head.to_env(dm.predict(batch))[0], actions[0], atol=1e-5, rtol=1e-5)


def test_pser_schedule_and_refined_labels():
    k = torch.arange(0, 101)
    a = pser_alpha(k, alpha_T=1.0, alpha_max=0.5, total=100)
    assert a[0] == 0 and a[20].item() == pytest.approx(0.2) and a[50] == 0.5 and a[100] == 0.5
    assert (a[1:] >= a[:-1]).all()  # progressive: never decreases
    label, earlier = torch.tensor([[[1.0], [-1.0]]]), torch.tensor([[[0.0], [0.5]]])
    torch.testing.assert_close(refine_labels(label, earlier, torch.tensor(0.25), False),
                               torch.tensor([[[0.75], [-0.625]]]))
    soft = refine_labels(torch.tensor([[2]]), torch.zeros(1, 1, 4), torch.tensor(0.2), True)  # one-hot vs uniform
    torch.testing.assert_close(soft, torch.tensor([[[0.05, 0.05, 0.85, 0.05]]]))


def test_pser_earlier_policy_refreshes_on_schedule(store):
    torch.manual_seed(0)
    dm = DecisionMamba(SMALL, spec_for(store)).train()
    opt = torch.optim.SGD([p for p in dm.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(0)
    snap = lambda: torch.cat([p.flatten() for p in dm.earlier.parameters()])  # noqa: E731
    cur = lambda: torch.cat([p.detach().flatten() for p in dm.net.parameters()])  # noqa: E731
    for k in range(12):
        before = cur()
        out = dm.losses(windows(store, 4, 4, g))  # update k: refreshes when k % 5 == 0
        assert out["pser_alpha"].item() == pytest.approx(min(0.5, k / 100))
        if k % 5 == 0:
            torch.testing.assert_close(snap(), before, atol=0, rtol=0)
        else:
            assert not torch.equal(snap(), before)
        opt.zero_grad()
        sum(v for n, v in out.items() if n.startswith("loss_")).backward()
        opt.step()
        assert dm.updates.item() == k  # losses() only reads the schedule
        dm.after_update()  # what the trainer calls after each optimiser step
    assert dm.updates.item() == 12 and all(p.grad is None for p in dm.earlier.parameters())


def test_pser_target_is_the_convex_mix(store):
    """With α > 0 the action term equals the MSE to (1-α) a + α â_earlier, computed by hand."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, pser_alpha_T=100.0, pser_alpha_max=0.5, state_weight=0.0, rtg_weight=0.0)
    dm = DecisionMamba(cfg, spec_for(store)).eval()
    for p in dm.earlier.parameters():  # an earlier policy that differs from the current one
        p.data.add_(0.1 * torch.randn_like(p))
    dm.updates.fill_(3)
    batch = windows(store, 5, 4, torch.Generator().manual_seed(2))
    out = dm.losses(batch)
    pred, early = dm.predict(batch), dm.earlier(batch)["action"]
    target = 0.5 * (batch.act - dm.head.center) / dm.head.scale + 0.5 * early
    m = batch.mask.float()
    want = 0.9 * (((pred - target) ** 2).mean(-1) * m).sum() / m.sum()
    torch.testing.assert_close(out["loss_action"], want)
    assert out["pser_alpha"].item() == 0.5


def test_checkpoint_round_trip_and_trainer(store, tmp_path):
    """The Trainer trains DM; its checkpoint rebuilds the same policy, earlier copy and step count."""
    env = dataclasses.replace(load_env("pendulum"), max_episode_steps=30)
    over = ["policy.embed_dim=16", "policy.n_layers=1", "policy.context_len=4", "policy.d_state=4",
            "policy.pser_interval=2", "trainer.steps=5", "source.batch_size=8", "trainer.eval_episodes=0",
            "trainer.warmup_steps=2", "trainer.log_every=1"]
    preset = load_agent("dm_small", parse_overrides(over))
    torch.manual_seed(0)
    policy = DecisionMamba(preset.policy, TaskSpec.from_store(store, env))
    Trainer(policy, DatasetSource(preset.source, store), preset, tmp_path).run()
    assert policy.updates.item() == 5
    again, preset2, ckpt = policy_from_checkpoint(tmp_path / "checkpoint.pt", "dm")
    assert ckpt["step"] == 5 and preset2.policy == preset.policy
    for (n, a), b in zip(policy.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)
    obs = torch.randn(2, 3)
    a1, _ = policy.eval().act(obs, policy.initial_state(2, "cpu"))
    a2, _ = again.eval().act(obs, again.initial_state(2, "cpu"))
    torch.testing.assert_close(a1, a2)


def test_discrete_actions_and_bad_config():
    obs_space, act_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Discrete(3)
    rng = np.random.default_rng(0)
    eps = [{"obs": rng.standard_normal((11, 2)).astype(np.float32), "act": rng.integers(0, 3, 10),
            "rew": np.ones(10), "term": np.eye(10, dtype=bool)[-1], "trunc": np.zeros(10, bool)} for _ in range(3)]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    dm = DecisionMamba(SMALL, spec_for(store))
    dm.updates.fill_(50)
    out = dm.losses(windows(store, 8, 4))
    assert out["loss_action"].requires_grad and out["pser_alpha"].item() == 0.5
    a, _ = dm.act(torch.randn(5, 2), dm.initial_state(5, "cpu"))
    assert a.dtype == torch.int64 and a.shape == (5,)
    with pytest.raises(PresetError, match="pser_alpha_max"):
        load_agent("dm_small", parse_overrides(["policy.pser_alpha_max=1.5"]))
    with pytest.raises(PresetError, match="context_len"):
        load_agent("dm", parse_overrides(["policy.context_len=0"]))


def test_window_anchor_chooses_the_sampler(store):
    """DM's training windows follow `window_anchor`, as DT's do: "end" samples what windows(anchor="end") does
    from the same generator, and differs from the default's draw; a third value is refused by name."""
    dm = DecisionMamba(dataclasses.replace(SMALL, window_anchor="end"), spec_for(store))
    got = dm.sample(store, 64, torch.Generator().manual_seed(3))
    assert torch.equal(got.obs, windows(store, 64, 4, torch.Generator().manual_seed(3), anchor="end").obs)
    assert not torch.equal(got.obs, windows(store, 64, 4, torch.Generator().manual_seed(3)).obs)
    with pytest.raises(PresetError, match="window_anchor"):
        load_agent("dm", parse_overrides(["policy.window_anchor=middle"]))
