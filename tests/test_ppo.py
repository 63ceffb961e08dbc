"""Recurrent PPO through the one Trainer and the env source: PPO math against slow references, truncated
BPTT replay, a short run with checkpoint and resume, Box actions, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from seqrl.checkpoint import load_checkpoint, policy_from_checkpoint
from seqrl.errors import DataError, PresetError
from seqrl.policies import TaskSpec, policy_class
from seqrl.nn import index_state, stack_states
from seqrl.policies.ppo import gae, ppo_loss, sequences
from seqrl.presets import EnvPreset, load_agent, load_env, parse_overrides
from seqrl.runners.sources import EnvSource
from seqrl.runners.trainer import Trainer

TINY = {"gtrxl": ["policy.d_model=16", "policy.gtrxl.n_layers=1", "policy.gtrxl.n_heads=2", "policy.gtrxl.d_ff=32",
                  "policy.gtrxl.memory=8"],
        "lstm_ppo": ["policy.d_model=16"]}
RUN = ["source.n_envs=4", "source.n_steps=16", "policy.seq_len=8", "policy.minibatches=2", "policy.epochs=2",
       "trainer.eval_episodes=4", "trainer.checkpoint_every=4", "trainer.log_every=4"]


def make(agent, env: EnvPreset, extra=()):
    torch.manual_seed(0)
    preset = load_agent(agent, parse_overrides(TINY.get(agent, []) + RUN + list(extra)))
    return policy_class(preset.agent)(preset.policy, TaskSpec.from_env(env)), preset


def start(policy, preset, env, tmp_path, resume=False):
    return Trainer(policy, EnvSource(preset.source, env), preset, tmp_path, resume=resume)


def tmaze(length=3):
    return load_env("tmaze", {"env_kwargs": {"length": length}})


# ------------------------------------------------------------------------------------ PPO math
def gae_reference(rew, value, done, last_value, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_(t+l), summed up to the episode's end or the rollout's end."""
    T, n = rew.shape
    adv = np.zeros((T, n))
    for e in range(n):
        for t in range(T):
            total, w = 0.0, 1.0
            for u in range(t, T):
                nxt = last_value[e] if u == T - 1 else value[u + 1, e]
                delta = rew[u, e] + (0.0 if done[u, e] else gamma * nxt) - value[u, e]
                total += w * delta
                if done[u, e]:
                    break
                w *= gamma * lam
            adv[t, e] = total
    return adv


def test_gae_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    T, n = 23, 4
    rew, value = torch.randn(T, n, generator=g, dtype=torch.float64), torch.randn(T, n, generator=g, dtype=torch.float64)
    done = torch.rand(T, n, generator=g) < 0.15
    done[-1, 0] = True  # an episode ending on the rollout's last step: last_value must not leak in
    last = torch.randn(n, generator=g, dtype=torch.float64)
    adv, ret = gae(rew, value, done, last, 0.97, 0.9)
    ref = gae_reference(rew.numpy(), value.numpy(), done.numpy(), last.numpy(), 0.97, 0.9)
    np.testing.assert_allclose(adv.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(ret, adv + value)
    # lambda = 1, gamma = 1, no ends: the advantage is the rest of the rollout's rewards + last value - value
    adv1, _ = gae(rew, value, torch.zeros(T, n, dtype=torch.bool), last, 1.0, 1.0)
    torch.testing.assert_close(adv1[0], rew.sum(0) + last - value[0])


def test_ppo_loss_on_a_hand_case():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.9]))  # ratios 1.5, 0.5, 1.1, 0.9 against old logp 0
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    value, old_value, ret = torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.zeros(4), torch.tensor([2.0, 0.0, 0.0, 1.0])
    entropy = torch.tensor([0.5, 0.5, 1.0, 1.0])
    t = ppo_loss(logp, old, adv, value, old_value, ret, entropy, clip_coef=0.2, vf_clip=0.2, ent_coef=0.1,
                 vf_coef=0.5, norm_adv=False)
    # per sample max(-A r, -A clip(r)): -1.2 (clipped at 1.2), -0.5 (0.5 < 0.8 is not clipped for A > 0),
    # 1.1 (inside), 1.8 (0.9 inside [0.8, 1.2])
    assert t["loss_policy"].item() == pytest.approx((-1.2 - 0.5 + 1.1 + 1.8) / 4)
    # values: clipped to old +- 0.2 -> [0.2, 0, 0.2, 0]; per sample max of squared errors: 3.24, 0, 0.25, 1
    assert t["value_loss"].item() == pytest.approx(0.5 * (3.24 + 0 + 0.25 + 1) / 4)
    assert t["loss_value"].item() == pytest.approx(0.5 * t["value_loss"].item())
    assert t["loss_entropy"].item() == pytest.approx(-0.1 * 0.75)
    assert t["clip_fraction"].item() == pytest.approx(0.5)  # 1.5 and 0.5 lie outside [0.8, 1.2]
    r = torch.tensor([1.5, 0.5, 1.1, 0.9])
    assert t["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item())
    # explained variance of the collection-time values (all 0): 1 - var(ret) / var(ret) = 0
    assert t["explained_variance"].item() == pytest.approx(0.0, abs=1e-6)
    # normalised advantages have mean 0: a constant ratio of 1 then gives a policy loss of 0
    t0 = ppo_loss(old, old, adv, value, old_value, ret, entropy, 0.2, 0.0, 0.0, 0.5)
    assert abs(t0["loss_policy"].item()) < 1e-6
    assert t0["value_loss"].item() == pytest.approx(0.5 * ((value - ret) ** 2).mean().item())  # vf_clip=0: unclipped


def test_sequences_and_states_line_up():
    T, n, L = 8, 3, 4
    x = torch.arange(T * n).view(T, n)  # x[t, e] = t * n + e
    seqs = sequences(x, L)  # (C*n, L)
    assert torch.equal(seqs[1 * n + 2], x[4:8, 2])  # sequence c*n + e = chunk c of env e
    from seqrl.nn.gtrxl import GTrXLState

    st = stack_states([GTrXLState((torch.full((n, 2, 1), float(c)),), torch.zeros(n, 2, dtype=torch.bool))
                       for c in range(T // L)])
    assert st.mem[0].shape == (T // L * n, 2, 1) and st.mem[0][n + 2, 0, 0] == 1.0 and st.mem[0][2, 0, 0] == 0.0
    sub = index_state(st, torch.tensor([n + 2]))
    assert sub.mem[0].shape == (1, 2, 1) and sub.valid.shape == (1, 2)


# ------------------------------------------------------------------------- collection and replay
@pytest.mark.parametrize("agent,backbone,separate", [("gtrxl", "gtrxl", False), ("lstm_ppo", "lstm", False),
                                                     ("gtrxl", "mamba", False), ("lstm_ppo", "lstm", True)])
def test_replay_from_recorded_memory_reproduces_collection(agent, backbone, separate, tmp_path):
    """Truncated BPTT: each sequence re-run from the memory recorded at its start gives back the
    log-probabilities and values of collection, across episode ends inside and between sequences; any
    backbone with the contract plugs in (Mamba included), and so does a critic with its own memory."""
    extra = [f"policy.backbone={backbone}", "policy.mamba.n_layers=1", "policy.mamba.d_state=4",
             f"policy.separate_critic={str(separate).lower()}"]
    policy, preset = make(agent, tmaze(3), extra)
    t = start(policy, preset, tmaze(3), tmp_path)
    t.source.collect(policy)  # a second rollout starts from a carried, non-empty memory
    ro = t.source.collect(policy)
    assert ro.first[1:].any() and len(ro.starts) == 2
    batches = list(policy.rollout_batches(ro, torch.Generator().manual_seed(0)))
    assert len(batches) == preset.policy.epochs * preset.policy.minibatches
    L = preset.policy.seq_len
    with torch.no_grad():
        h, hv, _ = policy.features(sequences(ro.obs, L), stack_states(ro.starts), sequences(ro.first, L))
        logp, _ = policy.head.log_prob_entropy(policy.head.dist(h), sequences(ro.act, L))
        value = policy.critic(hv)[..., 0]
    torch.testing.assert_close(logp, sequences(ro.extras["logp"], L), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, sequences(ro.extras["value"], L), atol=1e-5, rtol=1e-5)
    # at the start of training the ratio is 1 on every minibatch: approximate KL 0
    terms = policy.losses(batches[0])
    assert abs(float(terms["approx_kl"])) < 1e-6 and torch.isfinite(terms["loss_policy"])
    # the value loss shapes the actor's memory only when the critic shares it
    terms["loss_value"].backward()
    actor_grad = sum(float(p.grad.abs().sum()) for p in policy.backbone.parameters() if p.grad is not None)
    assert (actor_grad == 0) == separate
    t.source.close()


def test_run_logs_stores_checkpoints_and_resumes(tmp_path):
    policy, preset = make("gtrxl", tmaze(3), ["source.env_steps=128"])
    t = start(policy, preset, tmaze(3), tmp_path)
    res = t.run()
    assert t.source.env_steps == 128 and t.step == 2 * 2 * 2  # 2 collections x 2 epochs x 2 minibatches
    # TMaze pays +1 for the right turn and -1 otherwise: the success rate follows from the mean return
    assert res[""]["length_mean"] == 4 and res[""]["success_rate"] == pytest.approx((res[""]["return_mean"] + 1) / 2)
    store = t.source.store  # finished episodes went into the store: 4 steps each, return +1 or -1
    assert store.num_episodes >= 4 * 128 // 4 // 4 - 4 and set(store.episode_lengths) == {4}
    assert set(np.round(store.episode_returns, 6)) <= {-1.0, 1.0} and store.column("term").sum() == store.num_episodes
    assert (tmp_path / "tb").is_dir() and (tmp_path / "eval.json").is_file()
    assert not (tmp_path / "replay.npz").exists()  # PPO learns from its rollouts: no replay is kept
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", "ppo")
    assert ckpt["step"] == 8 and ckpt["source"] == {"env_steps": 128, "collections": 2, "credit": 0.0}
    # resume: counters and weights restored, then training continues to the new budget
    policy2, preset2 = make("gtrxl", tmaze(3), ["source.env_steps=192", "trainer.seed=5"])
    t2 = start(policy2, preset2, tmaze(3), tmp_path, resume=True)
    assert t2.source.env_steps == 128 and t2.step == 8
    for a, b in zip(policy.state_dict().values(), policy2.state_dict().values()):
        torch.testing.assert_close(a, b)
    t2.run()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["source"]["env_steps"] == 192
    # the checkpoint alone rebuilds an evaluable agent
    loaded, p, _ = policy_from_checkpoint(tmp_path / "checkpoint.pt")
    assert p.source.env_steps == 192 and loaded.spec.env.env_kwargs == {"length": 3}


def test_gtrxl_learns_a_short_tmaze(tmp_path):
    """Learning, not just running: the cue must cross 4 steps of memory; a memoryless policy scores 0.5."""
    policy, preset = make("gtrxl", tmaze(4), ["policy.d_model=32", "source.n_envs=8", "source.n_steps=32",
                                              "policy.seq_len=16", "trainer.lr=2e-3", "source.env_steps=4096",
                                              "trainer.eval_episodes=50", "trainer.checkpoint_every=0",
                                              "policy.epochs=4"])
    res = start(policy, preset, tmaze(4), tmp_path).run()
    assert res[""]["success_rate"] >= 0.9


def test_box_actions_with_gaussian_policy(tmp_path):
    env = EnvPreset(name="pendulum", env_id="Pendulum-v1", max_episode_steps=20)
    policy, preset = make("lstm_ppo", env, ["source.env_steps=64", "trainer.eval_episodes=2"])
    assert not policy.head.discrete and policy.head.log_std.shape == (1,)
    t = start(policy, preset, env, tmp_path)
    ro = t.source.collect(policy)
    ro2 = t.source.collect(policy)  # the 20-step episodes end in the second collection
    assert ro.act.shape == (16, 4, 1) and ro.act.dtype == torch.float32
    assert ro.term.sum() == 0 and ro.trunc.sum() == 0 and ro.first[0].all()
    with torch.no_grad():  # log-prob of a diagonal Gaussian, checked by hand for one sample
        h, _, _ = policy.features(ro.obs[0], ro.starts[0], step=True)
        mean, std = policy.head.out(h), policy.head.log_std.exp()
        by_hand = (-((ro.act[0] - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
    torch.testing.assert_close(ro.extras["logp"][0], by_hand, atol=1e-5, rtol=1e-5)
    # the store holds the actions the env got: the sample clipped to [-1, 1] and scaled to Pendulum's [-2, 2]
    store = t.source.store
    # in pieces: each env's first 16 steps, its episode's last 4 (truncated), the next episode's first 12
    assert list(store.stream) == [0, 1, 2, 3] * 3 and store.episode_lengths.tolist() == [16] * 4 + [4] * 4 + [12] * 4
    assert store.column("trunc")[64:80].reshape(4, 4)[:, -1].all() and store.column("trunc").sum() == 4
    sampled = torch.cat([ro.act[:, 0], ro2.act[:4, 0]])  # env 0's episode
    stored = np.r_[store.column("act")[:16], store.column("act")[64:68]]
    np.testing.assert_allclose(stored, (sampled.clamp(-1, 1) * 2).numpy(), rtol=1e-6)
    assert (sampled.abs() > 1).any()  # the clip mattered
    action, _ = policy.act(torch.zeros(2, 3), policy.initial_state(2, "cpu"))
    assert action.shape == (2, 1) and (action.abs() <= 2.0).all()
    t.source.close()


def test_truncated_episodes_are_bootstrapped(tmp_path):
    env = EnvPreset(name="cartpole", env_id="CartPole-v1", max_episode_steps=5)
    policy, preset = make("lstm_ppo", env, ["policy.gamma=0.9"])
    t = start(policy, preset, env, tmp_path)
    ro = t.source.collect(policy)
    assert ro.trunc.any() and not (ro.trunc & ro.term).any()
    assert (torch.arange(16)[:, None].expand(16, 4)[ro.trunc] % 5 == 4).all()  # cut at the 5th step of an episode
    assert (ro.final_extras["value"][ro.trunc] != 0).all() and (ro.final_extras["value"][~ro.trunc] == 0).all()
    t.source.close()


# ------------------------------------------------------------------------------------ bad input
def test_bad_input(tmp_path):
    policy, preset = make("gtrxl", tmaze(3))
    other = EnvPreset(name="cartpole", env_id="CartPole-v1", max_episode_steps=10)
    with pytest.raises(DataError, match="observation space"):
        start(policy, preset, other, tmp_path)
    with pytest.raises(DataError, match="unsupported space"):
        spec = TaskSpec(gym.spaces.Text(8), gym.spaces.Discrete(2), np.zeros(2), np.ones(2), other, {})
        policy_class("ppo")(preset.policy, spec)
    with pytest.raises(PresetError, match="policy.seq_len 5 does not divide source.n_steps 16"):
        load_agent("gtrxl", parse_overrides(RUN + ["policy.seq_len=5"]))
    with pytest.raises(PresetError, match="policy.minibatches 3 does not divide"):
        load_agent("gtrxl", parse_overrides(RUN + ["policy.minibatches=3"]))
    f = tmp_path / "ppo_offline.toml"
    f.write_text('agent = "ppo"\n[source]\nkind = "dataset"\n')
    with pytest.raises(PresetError, match=r"agent 'ppo' trains from source.kind \['env'\], not 'dataset'"):
        load_agent(f)
    with pytest.raises(PresetError, match="unknown key 'policy.window'"):
        load_agent("lstm_ppo", parse_overrides(["policy.window=10"]))
    with pytest.raises(PresetError, match="policy.backbone: 'rnn' is not one of"):
        load_agent("lstm_ppo", parse_overrides(["policy.backbone=rnn"]))
    with pytest.raises(PresetError, match=r"env_kwargs.length: \[1\] does not fit"):
        load_env("tmaze", {"env_kwargs": {"length": [1]}})
