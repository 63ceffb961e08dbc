"""Online runner: PPO math against slow references, truncated BPTT replay, a short run with checkpoint
and resume, Box actions, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from seqrl.checkpoint import load_checkpoint, policy_from_checkpoint
from seqrl.errors import DataError, PresetError
from seqrl.policies import TaskSpec, policy_class
from seqrl.presets import EnvPreset, load_agent, load_env, parse_overrides
from seqrl.runners.online import OnlineRunner, _sequences, gae, index_state, ppo_loss, stack_states

TINY = {"gtrxl": ["policy.d_model=16", "policy.n_layers=1", "policy.n_heads=2", "policy.d_ff=32", "policy.memory=8"],
        "lstm_ppo": ["policy.d_model=16"]}
RUN = ["runner.n_envs=4", "runner.n_steps=16", "runner.seq_len=8", "runner.minibatches=2", "runner.epochs=2",
       "runner.eval_episodes=4", "runner.checkpoint_every=1"]


def make(agent, env: EnvPreset, extra=()):
    torch.manual_seed(0)
    preset = load_agent(agent, parse_overrides(TINY[agent] + RUN + list(extra)))
    probe = gym.make(env.env_id, **env.env_kwargs)
    shape = probe.observation_space.shape
    spec = TaskSpec(probe.observation_space, probe.action_space, np.zeros(shape, np.float32), np.ones(shape, np.float32),
                    env, {})
    return policy_class(agent)(preset.policy, spec), preset


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
    # normalised advantages have mean 0: a constant ratio of 1 then gives a policy loss of 0
    t0 = ppo_loss(old, old, adv, value, old_value, ret, entropy, 0.2, 0.0, 0.0, 0.5)
    assert abs(t0["loss_policy"].item()) < 1e-6
    assert t0["value_loss"].item() == pytest.approx(0.5 * ((value - ret) ** 2).mean().item())  # vf_clip=0: unclipped


def test_sequences_and_states_line_up():
    T, n, L = 8, 3, 4
    x = torch.arange(T * n).view(T, n)  # x[t, e] = t * n + e
    seqs = _sequences(x, L)  # (C*n, L)
    assert torch.equal(seqs[1 * n + 2], x[4:8, 2])  # sequence c*n + e = chunk c of env e
    states = [{"c": c} for c in range(T // L)]
    from seqrl.nn.gtrxl import GTrXLState

    st = stack_states([GTrXLState((torch.full((n, 2, 1), float(s["c"])),), torch.zeros(n, 2, dtype=torch.bool))
                       for s in states])
    assert st.mem[0].shape == (T // L * n, 2, 1) and st.mem[0][n + 2, 0, 0] == 1.0 and st.mem[0][2, 0, 0] == 0.0
    sub = index_state(st, torch.tensor([n + 2]))
    assert sub.mem[0].shape == (1, 2, 1) and sub.valid.shape == (1, 2)


# ------------------------------------------------------------------------- runner and replay
@pytest.mark.parametrize("agent", ["gtrxl", "lstm_ppo"])
def test_replay_from_recorded_memory_reproduces_collection(agent, tmp_path):
    """Truncated BPTT: each sequence re-run from the memory recorded at its start gives back the
    log-probabilities and values of collection, across episode ends inside and between sequences."""
    policy, preset = make(agent, tmaze(3))
    runner = OnlineRunner(policy, preset, tmp_path)
    runner.collect()  # a second rollout starts from a carried, non-empty memory
    ro = runner.collect()
    assert ro.first[1:].any() and len(ro.starts) == 2
    L = preset.runner.seq_len
    state0 = stack_states(ro.starts)
    with torch.no_grad():
        logp, _, value = policy.evaluate_actions(_sequences(ro.obs, L), _sequences(ro.act, L), _sequences(ro.first, L), state0)
    torch.testing.assert_close(logp, _sequences(ro.logp, L), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, _sequences(ro.value, L), atol=1e-5, rtol=1e-5)
    runner.envs.close()


def test_run_logs_stores_checkpoints_and_resumes(tmp_path):
    policy, preset = make("gtrxl", tmaze(3), ["runner.total_steps=128"])
    runner = OnlineRunner(policy, preset, tmp_path)
    res = runner.run()
    assert runner.env_steps == 128 and runner.updates == 2
    assert 0.0 <= res[""]["success_rate"] <= 1.0 and res[""]["length_mean"] == 4
    store = runner.store  # finished episodes went into the store: 4 steps each, return +1 or -1
    assert store.num_episodes >= 4 * 128 // 4 // 4 - 4 and set(store.episode_lengths) == {4}
    assert set(np.round(store.episode_returns, 6)) <= {-1.0, 1.0} and store.column("term").sum() == store.num_episodes
    assert (tmp_path / "tb").is_dir() and (tmp_path / "eval.json").is_file()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", "gtrxl")
    assert ckpt["step"] == 128 and ckpt["updates"] == 2
    # resume: step count and weights restored, then training continues to the new budget
    policy2, preset2 = make("gtrxl", tmaze(3), ["runner.total_steps=192", "runner.seed=5"])
    r2 = OnlineRunner(policy2, preset2, tmp_path, resume=True)
    assert r2.env_steps == 128 and r2.updates == 2
    for a, b in zip(policy.state_dict().values(), policy2.state_dict().values()):
        torch.testing.assert_close(a, b)
    r2.run()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 192
    # the checkpoint alone rebuilds an evaluable policy
    loaded, p, _ = policy_from_checkpoint(tmp_path / "checkpoint.pt")
    assert p.runner.total_steps == 192 and loaded.spec.env.env_kwargs == {"length": 3}


def test_gtrxl_learns_a_short_tmaze(tmp_path):
    """Learning, not just running: the cue must cross 4 steps of memory; a memoryless policy scores 0.5."""
    torch.set_num_threads(1)
    policy, preset = make("gtrxl", tmaze(4), ["policy.d_model=32", "runner.n_envs=8", "runner.n_steps=32",
                                              "runner.seq_len=16", "runner.lr=2e-3", "runner.total_steps=4096",
                                              "runner.eval_episodes=50", "runner.checkpoint_every=0",
                                              "runner.epochs=4"])
    res = OnlineRunner(policy, preset, tmp_path).run()
    assert res[""]["success_rate"] >= 0.9


def test_box_actions_with_gaussian_policy(tmp_path):
    env = EnvPreset(name="pendulum", env_id="Pendulum-v1", max_episode_steps=20)
    policy, preset = make("lstm_ppo", env, ["runner.total_steps=64", "runner.eval_episodes=2"])
    assert not policy.discrete and policy.log_std.shape == (1,)
    runner = OnlineRunner(policy, preset, tmp_path)
    ro = runner.collect()
    assert ro.act.shape == (16, 4, 1) and ro.act.dtype == torch.float32
    assert ro.done.sum() == 0 and ro.first[0].all()
    with torch.no_grad():  # log-prob of a diagonal Gaussian, checked by hand for one sample
        h, _ = policy.backbone.step(policy._encode(ro.obs[0]), ro.starts[0])
        mean, std = policy.actor(h), policy.log_std.exp()
        by_hand = (-((ro.act[0] - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
    torch.testing.assert_close(ro.logp[0], by_hand, atol=1e-5, rtol=1e-5)
    obs = torch.zeros(2, 3)
    action, _ = policy.act(obs, policy.initial_state(2, "cpu"))
    assert action.shape == (2, 1) and (action.abs() <= 2.0).all()  # clipped to Pendulum's [-2, 2]
    runner.envs.close()


def test_truncated_episodes_are_bootstrapped(tmp_path):
    env = EnvPreset(name="cartpole", env_id="CartPole-v1", max_episode_steps=5)
    policy, preset = make("lstm_ppo", env, ["runner.gamma=0.9"])
    runner = OnlineRunner(policy, preset, tmp_path)
    ro = runner.collect()
    cut = ro.done & (torch.arange(16)[:, None] % 5 == 4)  # truncated at step 5 unless the pole fell first
    assert cut.any()
    assert not torch.allclose(ro.rew[cut], torch.ones_like(ro.rew[cut]))  # 1 + 0.9 * V(final obs)
    assert torch.allclose(ro.rew[~ro.done], torch.ones_like(ro.rew[~ro.done]))
    runner.envs.close()


# ------------------------------------------------------------------------------------ bad input
def test_bad_input(tmp_path):
    policy, preset = make("gtrxl", tmaze(3))
    with pytest.raises(PresetError, match="trains offline"):
        OnlineRunner(policy, load_agent("dt"), tmp_path)
    other = EnvPreset(name="cartpole", env_id="CartPole-v1", max_episode_steps=10)
    mismatched = TaskSpec(policy.spec.observation_space, policy.spec.action_space, policy.spec.obs_mean,
                          policy.spec.obs_std, other, {})
    policy.spec = mismatched
    with pytest.raises(DataError, match="observation space"):
        OnlineRunner(policy, preset, tmp_path)
    with pytest.raises(DataError, match="unsupported space"):
        spec = TaskSpec(gym.spaces.MultiDiscrete([2, 2]), gym.spaces.Discrete(2), np.zeros(2), np.ones(2), other, {})
        policy_class("gtrxl")(preset.policy, spec)
    with pytest.raises(PresetError, match="seq_len 5 does not divide n_steps 16"):
        load_agent("gtrxl", parse_overrides(RUN + ["runner.seq_len=5"]))
    with pytest.raises(PresetError, match="minibatches 3 does not divide"):
        load_agent("gtrxl", parse_overrides(RUN + ["runner.minibatches=3"]))
    with pytest.raises(PresetError, match="unknown key 'runner.steps'"):
        load_agent("gtrxl", parse_overrides(["runner.steps=10"]))  # the offline name, not total_steps
    with pytest.raises(PresetError, match="unknown key 'policy.window'"):
        load_agent("lstm_ppo", parse_overrides(["policy.window=10"]))
    with pytest.raises(PresetError, match=r"env_kwargs.length: \[1\] does not fit"):
        load_env("tmaze", {"env_kwargs": {"length": [1]}})


def test_any_backbone_with_the_contract_plugs_in(tmp_path):
    """The runner and ActorCritic know only the backbone contract: the Mamba backbone (seqrl/nn/mamba.py)
    works as the memory unchanged, replay included."""
    from seqrl.nn.mamba import MambaBackbone
    from seqrl.policies.gtrxl import ActorCritic

    gtrxl_policy, preset = make("gtrxl", tmaze(3))
    torch.manual_seed(0)
    policy = ActorCritic(gtrxl_policy.spec, MambaBackbone(16, n_layers=1, d_state=4), 16, 0.0)
    runner = OnlineRunner(policy, preset, tmp_path)
    runner.collect()
    ro = runner.collect()
    L = preset.runner.seq_len
    with torch.no_grad():
        logp, _, value = policy.evaluate_actions(_sequences(ro.obs, L), _sequences(ro.act, L), _sequences(ro.first, L),
                                                 stack_states(ro.starts))
    torch.testing.assert_close(logp, _sequences(ro.logp, L), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, _sequences(ro.value, L), atol=1e-5, rtol=1e-5)
    stats = runner.update(ro)
    assert np.isfinite(stats["loss"]) and runner.updates == 1
    runner.envs.close()
