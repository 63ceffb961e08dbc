"""The world-model agent (seqrl/policies/dreamer.py): returns against their n-step definition, the chunked
posterior pass against whole passes, acting against the training pass, gradient isolation, replay
arithmetic, checkpoints and bad input."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import stream_order
from seqrl.checkpoint import policy_from_checkpoint
from seqrl.data.store import Batch, ReplayStore
from seqrl.errors import DataError, PresetError
from seqrl.nn import map_state
from seqrl.policies import TaskSpec, policy_class
from seqrl.policies.dreamer import Dreamer, DreamerConfig, lambda_returns, percentiles
from seqrl.policies.world_model import WorldModelConfig, symexp
from seqrl.presets import EnvPreset, load_agent, parse_overrides
from seqrl.runners.sources import EnvSource
from seqrl.runners.trainer import Trainer

TINY = dict(d_model=16, n_layers=1, d_state=4, n_heads=2, z_dim=4, z_groups=3, z_classes=4, embed_dim=16, hidden=16,
            seq_len=8)


def spec_of(obs_space, act_space, env_id="CartPole-v1"):
    mean, std = np.zeros(obs_space.shape, np.float32), np.ones(obs_space.shape, np.float32)
    return TaskSpec(obs_space, act_space, mean, std, EnvPreset(name="t", env_id=env_id, max_episode_steps=50))


def make_agent(backbone="s4", act_space=None, latent="categorical", free_bits=1.0, reward_heads=1,
               prior_input_rate=0.0, **over):
    torch.manual_seed(0)
    act_space = act_space or gym.spaces.Discrete(3)
    wm = WorldModelConfig(backbone=backbone, latent=latent, free_bits=free_bits, reward_heads=reward_heads,
                          prior_input_rate=prior_input_rate, **TINY)
    cfg = DreamerConfig(world_model=wm, horizon=4, starts=2, hidden=16, **over)
    return Dreamer(cfg, spec_of(gym.spaces.Box(-5, 5, (3,), np.float32), act_space)).double()


def n_step_lambda_returns(rew, cont, value, gamma, lam):
    """The lambda-return as a weighted sum of n-step returns (Sutton & Barto 12.1), float64, by loops:
    R_k = (1 - lam) sum_{n=1}^{H-k-1} lam^(n-1) G_k^(n) + lam^(H-k-1) G_k^(H-k), with
    G_k^(n) = sum_{j<n} (gamma^j prod_{i<j} c_{k+i}) r_{k+j} + gamma^n prod_{i<n} c_{k+i} v_{k+n}."""
    H, N = rew.shape

    def G(k, n, b):
        out, disc = 0.0, 1.0
        for j in range(n):
            out += disc * rew[k + j, b]
            disc *= gamma * cont[k + j, b]
        return out + disc * value[k + n, b]

    R = np.zeros((H, N))
    for b in range(N):
        for k in range(H):
            m = H - k
            R[k, b] = sum((1 - lam) * lam ** (n - 1) * G(k, n, b) for n in range(1, m)) + lam ** (m - 1) * G(k, m, b)
    return R


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_lambda_returns_equal_their_n_step_definition(lam):
    g = torch.Generator().manual_seed(0)
    H, N = 6, 5
    rew = torch.randn(H, N, generator=g, dtype=torch.float64)
    cont = torch.rand(H, N, generator=g, dtype=torch.float64).round()  # some imagined episodes end
    value = torch.randn(H + 1, N, generator=g, dtype=torch.float64)
    got = lambda_returns(rew, cont, value, 0.9, lam)
    np.testing.assert_allclose(got.numpy(), n_step_lambda_returns(rew.numpy(), cont.numpy(), value.numpy(), 0.9, lam),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_percentile_equals_torch_quantile(n):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ps = (0.0, 0.05, 0.5, 0.95, 1.0)
    for p, got in zip(ps, percentiles(x, ps), strict=True):
        torch.testing.assert_close(got, torch.quantile(x.flatten().float(), p))


def batch_of(agent, B=3, K=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.rand(B, K, generator=g) < 0.2
    obs = torch.randn(B, K, 3, generator=g, dtype=torch.float64)
    if agent.discrete:
        act = torch.randint(0, agent.wm.a_dim, (B, K), generator=g)
    else:
        act = torch.rand(B, K, agent.wm.a_dim, generator=g, dtype=torch.float64) * 2 - 1
    return obs, act, first


def sequence_batch(obs, act, first, rew):
    """A Batch of B full sequences of K steps (what `sequences` gives): obs (B, K, 3), rew (B, K)."""
    B, K = first.shape
    flag = torch.zeros(B, K, dtype=torch.bool)
    return Batch(obs=obs, next_obs=obs, act=act, rew=rew, rtg=torch.zeros(B, K),
                 timestep=torch.zeros(B, K, dtype=torch.long), term=flag, trunc=flag, first=first, mask=~flag,
                 stream=torch.zeros(B, dtype=torch.long))


@pytest.mark.parametrize("backbone", ["s4", "gru", "transformer"])
def test_posterior_pass_in_parts_equals_one_pass(backbone):
    """The states kept at the ends of the parts are the states of a pass over that prefix alone, and the
    features of the whole sequence do not change when it runs in parts."""
    agent = make_agent(backbone)
    obs, act, first = batch_of(agent)
    wm = agent.wm
    whole = wm.posterior_pass(obs, act, first, sample=False)
    parts = wm.posterior_pass(obs, act, first, sample=False, ends=(3, 5, 8))
    torch.testing.assert_close(parts["h"], whole["h"])
    assert len(parts["states"]) == 3
    for e, state in zip((3, 5, 8), parts["states"]):
        alone = wm.posterior_pass(obs[:, :e], act[:, :e], first[:, :e], sample=False)["state"]
        map_state(lambda a, b: torch.testing.assert_close(a, b), state, alone)
    with pytest.raises(ValueError, match="ends .* must finish at the sequence's length 8"):
        wm.posterior_pass(obs, act, first, ends=(3, 5))


@pytest.mark.parametrize("backbone", ["s4", "gru"])
@pytest.mark.parametrize("box", [False, True])
def test_acting_step_by_step_equals_the_training_pass(backbone, box):
    """Acting (one backbone step per env step, episode ends fed back with `observe`) gives the features the
    world model's training pass gives on the same observations and actions, and the action is the
    actor's mode at them."""
    act_space = gym.spaces.Box(-2, 2, (2,), np.float32) if box else gym.spaces.Discrete(3)
    agent = make_agent(backbone, act_space).eval()
    n, T = 3, 9
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(T, n, 3, generator=g, dtype=torch.float64)
    done = torch.zeros(T, n, dtype=torch.bool)
    done[2, 0] = done[5, 1] = done[6, 0] = True  # episodes end at different steps per env
    state = agent.initial_state(n, "cpu")
    acts, feats = [], []
    for t in range(T):
        a, state = agent.act(obs[t], state)
        acts.append(a), feats.append(torch.cat([state.h, state.z], -1))
        state = agent.observe(state, torch.zeros(n), done[t])
    acts = torch.stack(acts, 1)  # (n, T[, A]) env units
    first = torch.zeros(n, T, dtype=torch.bool)
    first[:, 1:] = done[:-1].T
    out = agent.wm.posterior_pass(obs.transpose(0, 1), acts, first, sample=False)
    torch.testing.assert_close(torch.stack(feats, 1), torch.cat([out["h"], out["z"]], -1))
    dist = agent.policy(torch.cat([out["h"], out["z"]], -1))
    want = agent._to_env(agent._mode(dist))
    torch.testing.assert_close(acts, want.to(acts.dtype))
    if box:
        assert (acts.abs() <= 2).all()


def test_each_loss_steps_only_its_own_parameters():
    agent = make_agent("s4", bc_weight=0.5, free_bits=0.0, reward_heads=2, reward_penalty=1.0,  # below the free
                       prior_input_rate=0.5)  # bits, the KL terms have no gradient
    obs, act, first = batch_of(agent, B=4, K=8)
    terms = agent.losses(sequence_batch(obs, act, first, torch.randn(4, 8, dtype=torch.float64)))
    assert {"loss_reward_prior", "loss_cont_prior"} <= set(next(g for g in agent.optimizer_groups()).losses)
    for name in ("loss_actor", "loss_critic", *[k for k in terms if k.startswith("loss_") and "kl" in k]):
        assert torch.isfinite(terms[name])
    groups = {g.name: g for g in agent.optimizer_groups()}
    owner = {id(p): name for name, g in groups.items() for p in g.params}
    assert len(owner) == sum(1 for p in agent.parameters() if p.requires_grad)  # every trained parameter, once
    assert not any(id(p) in owner for p in agent.slow_critic.parameters())
    for name, g in groups.items():
        for term in g.losses:
            grads = torch.autograd.grad(terms[term], [p for p in agent.parameters() if p.requires_grad],
                                        retain_graph=True, allow_unused=True)
            touched = {owner[id(p)] for p, gr in zip([p for p in agent.parameters() if p.requires_grad], grads)
                       if gr is not None and gr.abs().sum() > 0}
            assert touched == {name}, (term, touched)
    assert terms["bc_nll"] > 0 and agent.return_seen and agent.return_scale > 0


def test_actor_saturated_is_the_share_of_steps_with_an_action_under_unimixs_share():
    """`actor_saturated` (logged as train/actor_saturated) counts the imagined steps where some action's softmax is
    under unimix's share (0.01 / 3 here): there the policy gradient and the entropy bonus give that action's logit
    next to nothing. An actor sure of action 0 (logits 30, 0, 0) is saturated on every step and gets no gradient on
    its bias; a new actor (near uniform) and one at logits 2, 0, 0 (softmax 0.79 / 0.11 / 0.11) on none."""
    obs, act, first = batch_of(make_agent("s4"), B=4, K=8)
    batch = sequence_batch(obs, act, first, torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator()
                                                        .manual_seed(1)))
    assert make_agent("s4").losses(batch)["actor_saturated"] == 0.0
    for logits, saturated in (([30.0, 0.0, 0.0], 1.0), ([2.0, 0.0, 0.0], 0.0)):
        agent = make_agent("s4")
        with torch.no_grad():
            agent.actor[-1].bias.copy_(torch.tensor(logits))
        terms = agent.losses(batch)
        assert terms["actor_saturated"] == saturated
        grad = torch.autograd.grad(terms["loss_actor"], agent.actor[-1].bias)[0]
        assert (grad.abs().max() < 1e-9) == (saturated == 1.0)


def test_reward_ensemble_penalty_is_a_lower_confidence_bound():
    """R reward heads: each is trained on the real rewards (loss_reward is their mean squared error, averaged over
    heads), and imagined rewards are their mean less reward_penalty standard deviations. Heads made constant
    (zero weights, biases symlog(v_i)) give exactly mean(v) - penalty std(v) at every imagined step."""
    from seqrl.policies.world_model import symlog

    v = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    agent = make_agent("s4", reward_heads=3, reward_penalty=0.5)
    heads = (agent.wm.reward_head, *agent.wm.reward_ensemble)
    assert len(heads) == 3
    with torch.no_grad():
        for head, vi in zip(heads, v):
            head[-1].weight.zero_(), head[-1].bias.fill_(symlog(vi))
    obs, act, first = batch_of(agent, B=2, K=8)
    out = agent.wm.posterior_pass(obs, act, first, ends=(8,))
    im = agent.dream(out["states"][0], out["h"][:, -1], out["z"][:, -1])
    std = v.std(unbiased=False)
    torch.testing.assert_close(im["rew"], torch.full_like(im["rew"], float(v.mean() - 0.5 * std)))
    torch.testing.assert_close(im["spread"], torch.full_like(im["spread"], float(std)))
    rew = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    terms = agent.losses(sequence_batch(obs, act, first, rew))
    expect = torch.stack([((symlog(vi) - symlog(rew)) ** 2).mean() for vi in v]).mean()
    torch.testing.assert_close(terms["loss_reward"], expect)
    assert terms["reward_spread"] > 0
    # one head (the default) keeps the parameter names of checkpoints written before the ensemble
    assert not any("reward_ensemble" in k for k in make_agent("s4").state_dict())


class _Imagined(torch.nn.Module):
    """The normalised lambda-return of an imagination from fixed starts, as a function of the agent's parameters."""

    def __init__(self, agent, starts):
        super().__init__()
        self.agent, self.starts = agent, starts

    def forward(self):
        torch.manual_seed(0)  # the same action and latent noise at every call
        im = self.agent.dream(*self.starts)
        slow = self.agent.slow_critic(im["feat"])[..., 0]
        c = self.agent.config
        return lambda_returns(im["rew"], im["cont"], symexp(slow), c.gamma, c.lam).mean()


def test_box_actor_gradient_backpropagates_through_imagination():
    """Box actions: the actor's gradient of the imagined return, through reparameterised actions and the world
    model's dynamics (and the reward ensemble's penalty), equals finite differences (gradcheck, float64, Gaussian
    latents, fixed noise)."""
    agent = make_agent("gru", gym.spaces.Box(-1, 1, (2,), np.float32), latent="gaussian", reward_heads=3,
                       reward_penalty=0.5)
    with torch.no_grad():
        for p in [*agent.actor.parameters(), *agent.wm.reward_head.parameters(),
                  *agent.wm.reward_ensemble.parameters()]:
            p.copy_(torch.randn_like(p) * 0.3)
    obs, act, first = batch_of(agent, B=2, K=8)
    out = agent.wm.posterior_pass(obs, act, first, sample=False, ends=(8,))
    starts = (map_state(torch.Tensor.detach, out["states"][0]), out["h"][:, -1].detach(), out["z"][:, -1].detach())
    model = _Imagined(agent, starts)
    name = "agent.actor.6.weight"
    w0 = dict(model.named_parameters())[name].detach().clone().requires_grad_(True)
    f = lambda w: torch.func.functional_call(model, {name: w}, ())  # noqa: E731
    assert torch.autograd.gradcheck(f, (w0,), eps=1e-6, atol=1e-6)
    g, = torch.autograd.grad(f(w0), w0)
    assert g.abs().sum() > 0  # the return does depend on the actor through the dynamics
    agent_d = make_agent("gru", latent="gaussian")  # discrete: imagination takes no gradient
    im = agent_d.dream(*starts)
    assert not im["feat"].requires_grad


def losses_and_imagination(agent, batch):
    """agent.losses(batch) under a fixed torch seed, and the imagination it drew."""
    seen, dream = {}, agent.dream
    agent.dream = lambda *a, **k: seen.setdefault("im", dream(*a, **k))
    torch.manual_seed(5)
    return agent.losses(batch), seen["im"]


def test_box_actor_by_reinforce_takes_no_gradient_through_imagination():
    """box_gradient = "reinforce": imagination keeps no graph for Box actions either, and the actor's gradient is
    REINFORCE's, -sum_k w_k [adv_k log pi(a_k) + eta H_k] / sum_k w_k with the advantages, step weights and actions
    of the same imagination, written out here from torch's Normal (float64); the dynamics version's differs."""
    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    obs, act, first = batch_of(make_agent("s4", box), B=3, K=8)
    batch = sequence_batch(obs, act, first, torch.randn(3, 8, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(2)))
    agents, grads, ims = {}, {}, {}
    for how in ("reinforce", "dynamics"):
        agents[how] = agent = make_agent("s4", box, box_gradient=how)
        with torch.no_grad():
            w = agent.actor[-1].weight
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(3), dtype=w.dtype) * 0.3)
        terms, ims[how] = losses_and_imagination(agent, batch)
        grads[how] = torch.autograd.grad(terms["loss_actor"], w)[0]
    assert not ims["reinforce"]["feat"].requires_grad and ims["dynamics"]["feat"].requires_grad
    assert not torch.allclose(grads["reinforce"], grads["dynamics"])

    agent, im = agents["reinforce"], ims["reinforce"]  # its return scale as the loss left it
    c = agent.config
    ret = lambda_returns(im["rew"], im["cont"], symexp(agent.slow_critic(im["feat"])[..., 0]), c.gamma, c.lam)
    weight = torch.cumprod(torch.cat([torch.ones_like(im["cont"][:1]), im["cont"][:-1]]), 0)
    adv = (ret - symexp(agent.critic(im["feat"][:-1])[..., 0])) / agent.return_scale.clamp(min=1.0)
    mean, raw = agent.actor(im["feat"][:-1]).chunk(2, -1)
    dist = torch.distributions.Normal(torch.tanh(mean), (c.max_std - c.min_std) * torch.sigmoid(raw + 2) + c.min_std)
    logp, ent = dist.log_prob(im["act"]).sum(-1), dist.entropy().sum(-1)
    by_hand = -((adv.detach() * logp + c.entropy * ent) * weight).sum() / weight.sum()
    assert torch.allclose(torch.autograd.grad(by_hand, agent.actor[-1].weight)[0], grads["reinforce"], rtol=1e-9,
                          atol=1e-12)


def test_imagination_starts_pair_each_state_with_its_own_features(monkeypatch):
    """Row i*B + b of the starts is part i of sequence b in the backbone state, h and z alike (with the GRU the
    state's top layer is h itself)."""
    agent = make_agent("gru")
    obs, act, first = batch_of(agent, B=3, K=8)
    b = sequence_batch(obs, act, first, torch.zeros(3, 8, dtype=torch.float64))
    seen = {}
    real_dream = Dreamer.dream

    def spy(self, state, h, z):
        seen.update(state=state, h=h, z=z)
        return real_dream(self, state, h, z)

    monkeypatch.setattr(Dreamer, "dream", spy)
    torch.manual_seed(0)
    agent.losses(b)
    torch.testing.assert_close(seen["state"].h[:, -1], seen["h"])  # (C B, d): the same rows in the same order
    torch.manual_seed(0)
    out = agent.wm.posterior_pass(obs, act, first, ends=agent._ends(8))  # the same latent draws
    for i, e in enumerate(agent._ends(8)):
        torch.testing.assert_close(seen["z"][i * 3 : (i + 1) * 3], out["z"][:, e - 1])


def test_slow_critic_follows_the_critic():
    agent = make_agent("gru", slow_rate=0.25)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.slow_critic.parameters()]
    agent.after_update()
    for b, s, p in zip(before, agent.slow_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(s, b + 0.25 * (p - b))


# ----------------------------------------------------------------------------------------- through the Trainer
def tiny_preset(*extra, agent="s4wm_agent"):
    over = [f"policy.world_model.{k}={v}" for k, v in TINY.items()] + [
        "policy.horizon=4", "policy.starts=2", "policy.hidden=16", "source.n_envs=2", "source.n_steps=8",
        "source.batch_size=4", "source.learning_starts=40", "source.train_ratio=16", "source.env_steps=160",
        "trainer.eval_episodes=2", "trainer.log_every=5", "trainer.threads=1", *extra]
    return load_agent(agent, parse_overrides(over))


def test_online_replay_holds_every_step_taken_with_unfinished_episodes_in_pieces(tmp_path):
    from seqrl.runners.sources import resolve_env

    preset = tiny_preset("source.n_steps=12")
    env = resolve_env("Pendulum-v1", {})  # 200-step episodes: the first ends 8 steps into the 17th collection
    torch.manual_seed(0)
    policy = policy_class("dreamer")(preset.policy, TaskSpec.from_env(env))
    src = EnvSource(preset.source, env)
    src.start(policy, torch.device("cpu"), seed=0, rank=0, world=1)
    src.collect(policy)
    store = src.store
    assert len(store) == 24 and store.t0.tolist() == [0, 0]  # replay has the steps before any episode ends
    for _ in range(16):
        src.collect(policy)
    assert len(store) == 17 * 24 and src._log["lengths"] == [200, 200]
    for env_i in range(2):  # each env's pieces, in order, are its episode and the next one's first 4 steps
        ks = np.flatnonzero(store.stream == env_i)
        steps = stream_order(store)[env_i]
        assert store.column("timestep")[steps].tolist() == [*range(200), *range(4)]
        assert np.flatnonzero(store.column("trunc")[steps]).tolist() == [199] and not store.column("term").any()
        obs, final = store.column("obs"), store.final_obs
        for k, k_next in zip(ks[:-1], ks[1:]):  # a piece's final observation is the next piece's first
            if store.t0[k_next]:
                np.testing.assert_array_equal(final[k], obs[store.ep_start[k_next]])
        assert src._log["returns"][env_i] == pytest.approx(float(store.column("rew")[steps[:200]].sum()), rel=1e-5)
    ts = policy.sample(store, 64, torch.Generator().manual_seed(0)).timestep  # 64-step sequences across pieces
    on = ts[:, 1:] == ts[:, :-1] + 1
    assert (on | ((ts[:, :-1] == 199) & (ts[:, 1:] == 0))).all() and (ts[:, 0] > 0).any()
    # a resume (the replay saved mid-episode, as a checkpoint does) starts fresh episodes after the pieces stored
    src.save(tmp_path)
    src2 = EnvSource(preset.source, env)
    src2.start(policy, torch.device("cpu"), seed=0, rank=0, world=1)
    src2.load_state_dict(src.state_dict())
    src2.restore(tmp_path)
    src2.collect(policy)
    steps = stream_order(src2.store)[0]
    assert src2.store.column("timestep")[steps].tolist() == [*range(200), *range(4), *range(12)]
    assert not src2.store.column("term")[steps][200:].any() and not src2.store.column("trunc")[steps][200:].any()
    src.close(), src2.close()


@pytest.mark.parametrize("agent", ["s4wm_agent", "dreamer"])
def test_online_training_replays_at_the_train_ratio_and_resumes(tmp_path, agent):
    from seqrl.runners.sources import resolve_env

    preset = tiny_preset(agent=agent)
    env = resolve_env("CartPole-v1", {})
    spec = TaskSpec.from_env(env)
    torch.manual_seed(0)
    policy = policy_class("dreamer")(preset.policy, spec)
    src = EnvSource(preset.source, env)
    trainer = Trainer(policy, src, preset, tmp_path / "run")
    trainer.run()
    # 10 collections of 16 env steps; from the first with >= 40 stored steps on, 16 x 16 = 256 steps owed per
    # collection, paid in updates of 4 x 8 = 32 replayed steps: 8 updates each
    assert src.env_steps == 160
    started = trainer.step // 8
    assert trainer.step == 8 * started and 1 <= started <= 8
    assert len(src.store) >= 40 and src.credit == 0
    res = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert res["global_step"] == 160 and res[""]["return_mean"] >= 8  # a CartPole episode lasts >= 8 steps
    # resume with a larger budget: the counters come back and training goes on
    preset2 = dataclasses.replace(preset, source=dataclasses.replace(preset.source, env_steps=192))
    policy2 = policy_class("dreamer")(preset2.policy, spec)
    src2 = EnvSource(preset2.source, env)
    t2 = Trainer(policy2, src2, preset2, tmp_path / "run", resume=True)
    assert t2.step == trainer.step and src2.env_steps == 160
    assert src2.store.num_episodes == src.store.num_episodes and len(src2.store) == len(src.store)  # replay.npz
    t2.run()
    assert src2.env_steps == 192 and t2.step > trainer.step
    assert src2.collect(policy2) is None and src2.env_steps == 208  # a replaying agent's steps go to the store only
    loaded = policy_from_checkpoint(tmp_path / "run" / "checkpoint.pt")[0]
    assert isinstance(loaded, Dreamer)


def test_imagine_reads_an_online_agents_world_model_and_replay(tmp_path):
    """`seqrl imagine` on a world-model agent's checkpoint: its `wm`, on the replay.npz saved beside it."""
    from seqrl.runners.imagine import imagine_checkpoint, world_model_from_checkpoint
    from seqrl.runners.sources import resolve_env

    preset = tiny_preset()
    env = resolve_env("CartPole-v1", {})
    torch.manual_seed(0)
    policy = policy_class("dreamer")(preset.policy, TaskSpec.from_env(env))
    Trainer(policy, EnvSource(preset.source, env), preset, tmp_path / "run").run()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    model, _ = world_model_from_checkpoint(ckpt)
    want = policy.wm.state_dict()
    assert model.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    res = imagine_checkpoint(ckpt, context=2, horizon=3, out=tmp_path / "im", sequences=2, show=2)
    replay = ReplayStore.load(tmp_path / "run" / "replay.npz")
    assert res["agent"] == "dreamer" and res["sequences"] == 2 and len(res["mse_per_step"]) == 3
    assert all(replay.episode_lengths[e] >= 5 for e in res["episodes"])
    assert res["reward_accuracy_constant"] == 1.0  # CartPole pays +1 every step
    assert json.loads((tmp_path / "im" / "imagine.json").read_text())["episodes"] == res["episodes"]
    (tmp_path / "run" / "replay.npz").rename(tmp_path / "saved.npz")
    again = imagine_checkpoint(ckpt, context=2, horizon=3, out=tmp_path / "im2", dataset=str(tmp_path / "saved.npz"),
                               sequences=2)
    assert again["episodes"] == res["episodes"] and again["mse_mean"] == pytest.approx(res["mse_mean"])
    with pytest.raises(DataError, match="names no dataset and has no replay.npz beside it"):
        imagine_checkpoint(ckpt, context=2, horizon=3, out=tmp_path / "im3")


def test_box_actions_stay_in_bounds_when_exploring():
    agent = make_agent("s4", gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)))
    state = agent.initial_state(64, "cpu")
    obs = torch.randn(64, 3, dtype=torch.float64)
    a, env_a, extras, state = agent.explore(obs, state)
    assert extras == {} and a.shape == (64, 2)
    assert (env_a[:, 0].abs() <= 2).all() and (env_a[:, 1] >= 0).all() and (env_a[:, 1] <= 1).all()
    assert env_a.std(0).min() > 0.05  # it explores


def test_offline_from_a_store_with_behaviour_cloning(tmp_path):
    rng = np.random.default_rng(0)
    obs_space, act_space = gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(3)
    eps = [{"obs": rng.normal(size=(21, 3)).astype(np.float32), "act": np.full(20, 2), "rew": np.ones(20, np.float32),
            "term": np.r_[np.zeros(19, bool), True], "trunc": np.zeros(20, bool)} for _ in range(6)]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    agent = make_agent("s4", bc_weight=1.0).float()
    first = agent.losses(agent.sample(store, 4, torch.Generator().manual_seed(0)))["bc_nll"]
    opt = torch.optim.Adam(agent.actor.parameters(), lr=1e-2)
    for _ in range(30):
        terms = agent.losses(agent.sample(store, 4, torch.Generator().manual_seed(0)))
        opt.zero_grad()
        terms["loss_actor"].backward()
        opt.step()
    assert terms["bc_nll"] < 0.5 * first  # the actor moves towards the data's action
    assert agent.act(torch.zeros(2, 3), agent.initial_state(2, "cpu"))[0].tolist() == [2, 2]


def test_a_dataset_without_rewards_is_refused():
    obs_space, act_space = gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(3)
    eps = [{"obs": np.zeros((11, 3), np.float32), "act": np.zeros(10, np.int64), "rew": np.zeros(10, np.float32),
            "term": np.r_[np.zeros(9, bool), True], "trunc": np.zeros(10, bool)}
           for _ in range(3)]
    store = ReplayStore.from_episodes(eps, obs_space, act_space)
    agent = make_agent("s4").float()
    with pytest.raises(DataError, match=r"every reward of the dataset .* is 0 \(30 steps\)"):
        agent.sample(store, 2)
    eps[1]["rew"][4] = 1.0
    assert agent.sample(ReplayStore.from_episodes(eps, obs_space, act_space), 2).obs.shape == (2, 8, 3)


def test_bad_input():
    with pytest.raises(DataError, match="the actor takes Discrete or Box actions"):
        make_agent("s4", gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match=r"reward_penalty 1.0 needs an ensemble: set world_model.reward_heads >= 2"):
        DreamerConfig(world_model=WorldModelConfig(**TINY), reward_penalty=1.0)
    with pytest.raises(ValueError, match="starts 9 exceeds world_model.seq_len 8"):
        DreamerConfig(world_model=WorldModelConfig(**TINY), starts=9)
    with pytest.raises(PresetError, match="train_ratio must be > 0"):
        tiny_preset("source.train_ratio=0")
    with pytest.raises(PresetError, match="min_std"):
        tiny_preset("policy.min_std=0")


def test_resume_needs_the_replay_store(tmp_path):
    from seqrl.errors import CheckpointError
    from seqrl.runners.sources import resolve_env

    preset = tiny_preset("source.env_steps=64")
    env = resolve_env("CartPole-v1", {})
    spec = TaskSpec.from_env(env)
    Trainer(policy_class("dreamer")(preset.policy, spec), EnvSource(preset.source, env), preset, tmp_path).run()
    (tmp_path / "replay.npz").unlink()
    with pytest.raises(CheckpointError, match="replay.npz is missing"):
        Trainer(policy_class("dreamer")(preset.policy, spec), EnvSource(preset.source, env), preset, tmp_path,
                resume=True)


def test_resume_after_a_kill_between_the_replay_and_the_checkpoint(tmp_path):
    """A kill after `replay.npz` was written and before the checkpoint was: the older checkpoint resumes with the
    newer replay (a superset of what its weights saw), and training goes on."""
    import shutil

    from seqrl.runners.sources import resolve_env

    env = resolve_env("CartPole-v1", {})
    spec = TaskSpec.from_env(env)
    p1 = tiny_preset("source.env_steps=64")
    Trainer(policy_class("dreamer")(p1.policy, spec), EnvSource(p1.source, env), p1, tmp_path).run()
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "old.pt")
    p2 = tiny_preset("source.env_steps=128")
    src2 = EnvSource(p2.source, env)
    Trainer(policy_class("dreamer")(p2.policy, spec), src2, p2, tmp_path, resume=True).run()
    shutil.copy(tmp_path / "old.pt", tmp_path / "checkpoint.pt")  # the newer checkpoint never reached the disk
    src3 = EnvSource(p2.source, env)
    t3 = Trainer(policy_class("dreamer")(p2.policy, spec), src3, p2, tmp_path, resume=True)
    assert src3.env_steps == 64 and src3.store.num_episodes == src2.store.num_episodes
    before = t3.step
    t3.run()
    assert src3.env_steps == 128 and t3.step > before
