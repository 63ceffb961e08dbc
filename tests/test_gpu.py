"""CUDA-only checks, run on the GPU machine (`pytest tests/test_gpu.py`); skipped elsewhere."""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_episodes, step_through
from seqrl.data.store import ReplayStore
from seqrl.nn.transformer import CausalTransformer
from seqrl.policies import TaskSpec, policy_class
from seqrl.policies.dt import DecisionTransformer
from seqrl.presets import load_agent, load_env, parse_overrides
from seqrl.data.samplers import windows_at
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_step_equals_forward_on_cuda():
    torch.manual_seed(0)
    m = CausalTransformer(64, 2, 2, window=9, dropout=0.0).cuda().eval()
    x = torch.randn(4, 20, 64, device="cuda")
    reset = torch.zeros(4, 20, dtype=torch.bool, device="cuda")
    reset[2, 7] = True
    y, _ = m(x, m.initial_state(4, "cuda"), reset=reset)
    s, ys = m.initial_state(4, "cuda"), []
    for t in range(20):
        s = m.reset(s, reset[:, t])
        yt, s = m.step(x[:, t], s)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=1e-5)


def _runner(store, tmp_path, graph, amp=False, compile=False):
    torch.manual_seed(0)
    preset = load_agent("dt", parse_overrides([
        "trainer.device=cuda", f"trainer.cuda_graph={str(graph).lower()}", f"trainer.amp={str(amp).lower()}",
        f"trainer.compile={str(compile).lower()}",
        "trainer.warmup_steps=5", "trainer.lr=1e-3", "trainer.eval_episodes=0", "policy.dropout=0.0",
        "policy.embed_dim=32", "policy.n_layers=2", "policy.context_len=6", "source.batch_size=16"]))
    env = dataclasses.replace(load_env("hopper"), max_episode_steps=100)
    policy = DecisionTransformer(preset.policy, TaskSpec.from_store(store, env))
    return Trainer(policy, DatasetSource(preset.source, store), preset, tmp_path / f"graph{graph}")


@pytest.fixture
def hopper_like(spaces):
    import gymnasium as gym

    sp = (gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32))
    return ReplayStore.from_episodes(make_episodes([50, 70, 30]), *sp)


def test_cuda_graph_updates_equal_eager_updates(hopper_like, tmp_path, monkeypatch):
    """On a fixed batch (no sampling randomness), 10 graph-mode updates (3 eager warm-ups, capture,
    replays with the learning-rate schedule) give the parameters of 10 eager updates."""
    hopper_like.to("cuda")
    fixed = windows_at(hopper_like, np.arange(0, 150, 10)[:16].tolist() + [5], 6)
    fixed = type(fixed)(**{f.name: getattr(fixed, f.name)[:16] for f in dataclasses.fields(fixed)})
    params = {}
    for graph in (False, True):
        r = _runner(hopper_like, tmp_path, graph)
        monkeypatch.setattr(r.agent, "sample", lambda store, b, generator=None: fixed)
        assert r.use_graph is graph
        while r.step < 10:
            r.iteration()
        assert (r._graph is not None) is graph  # graph mode captured a graph and replayed it
        params[graph] = torch.cat([p.detach().flatten() for p in r.agent.parameters()])
        assert r.step == 10
    torch.testing.assert_close(params[True], params[False], atol=1e-5, rtol=1e-4)


def test_cuda_graph_bf16_training_learns(hopper_like, tmp_path):
    r = _runner(hopper_like.to("cuda"), tmp_path, graph=True, amp=True)
    first = float(r.iteration()[0]["loss"])
    for _ in range(200):
        out = r.iteration()[0]
    assert float(out["loss"]) < 0.7 * first


def test_every_graph_mode_update_is_one_step(hopper_like, tmp_path):
    """Through warm-up, capture and replays, each update is one optimiser step: AdamW's step count follows
    the trainer's (a capture that ran the update twice, or a replay that skipped it, would not)."""
    r = _runner(hopper_like.to("cuda"), tmp_path, graph=True)
    r.preset = dataclasses.replace(r.preset, trainer=dataclasses.replace(r.preset.trainer, steps=7))
    r.cfg = r.preset.trainer
    r.run()
    assert r.step == 7 and r._graph is not None  # 3 eager warm-ups, the capture (update 4) and 3 replays
    opt = r.opts["agent"]
    assert all(int(s["step"]) == 7 for s in opt.state.values())


def test_eager_checkpoint_resumes_under_a_cuda_graph(hopper_like, tmp_path):
    eager = _runner(hopper_like.to("cuda"), tmp_path, graph=False)
    for _ in range(5):
        eager.iteration()
    eager.save()
    torch.manual_seed(0)
    preset = dataclasses.replace(eager.preset, trainer=dataclasses.replace(eager.preset.trainer, cuda_graph=True))
    policy = DecisionTransformer(preset.policy, eager.agent.spec)
    resumed = Trainer(policy, DatasetSource(preset.source, hopper_like), preset, eager.run_dir, resume=True)
    assert resumed.step == 5 and resumed.use_graph
    for _ in range(6):  # 3 warm-ups, the capture and 2 replays
        out = resumed.iteration()[0]
    assert resumed.step == 11 and resumed._graph is not None and torch.isfinite(out["loss"])
    assert all(g["capturable"] for g in resumed.opts["agent"].param_groups)


@pytest.mark.parametrize("fine_group", [0, 3])
def test_mamba_step_equals_forward_on_cuda(fine_group):
    """The Triton scan (forward) and the Triton step kernel (step) give the same outputs and states."""
    from seqrl.nn.mamba import MambaBackbone

    torch.manual_seed(0)
    m = MambaBackbone(32, 2, d_state=16, d_conv=4, expand=2, fine_group=fine_group).cuda().eval()
    B, T = 3, 200
    x = torch.randn(B, T, 32, device="cuda")
    reset = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    reset[1, 50] = reset[2, 7] = reset[2, 151] = True
    with torch.no_grad():
        y, final = m(x, m.initial_state(B, "cuda"), reset=reset)
        ys, state = step_through(m, x, m.initial_state(B, "cuda"), reset)
    torch.testing.assert_close(ys, y, atol=1e-4, rtol=1e-4)
    for a, b in zip(state.layers, final.layers):
        torch.testing.assert_close(a.ssm, b.ssm, atol=1e-4, rtol=1e-4)


def test_decision_mamba_trains_under_a_cuda_graph(hopper_like, tmp_path):
    """DM through the trainer on CUDA: bf16, one graph per update (Triton scans inside), and
    the earlier-policy refresh of self-evolution happening inside the captured graph."""
    from seqrl.policies.dm import DecisionMamba

    torch.manual_seed(0)
    preset = load_agent("dm_small", parse_overrides([
        "trainer.device=cuda", "trainer.amp=true", "trainer.eval_episodes=0", "trainer.warmup_steps=5",
        "source.batch_size=16", "policy.context_len=6", "policy.pser_interval=20"]))
    env = dataclasses.replace(load_env("hopper"), max_episode_steps=100)
    store = hopper_like.to("cuda")
    policy = DecisionMamba(preset.policy, TaskSpec.from_store(store, env))
    r = Trainer(policy, DatasetSource(preset.source, store), preset, tmp_path / "dm")
    assert r.use_graph
    initial = [p.detach().clone() for p in policy.earlier.parameters()]
    first = float(r.iteration()[0]["loss"])
    for _ in range(150):
        out = r.iteration()[0]
    assert r._graph is not None and r.step == 151 and policy.updates.item() == 151
    assert float(out["loss"]) < 0.7 * first
    # refreshes fall on updates 20, 40, ...: all inside graph replays (the capture happens at update 4)
    assert any(not torch.equal(a, b) for a, b in zip(policy.earlier.parameters(), initial))


def test_compiled_losses_train_like_eager(hopper_like, tmp_path):
    """trainer.compile=true (torch.compile of the agent's losses, eager updates): the same parameters as
    eager updates on a fixed batch, to float tolerance."""
    fixed = windows_at(hopper_like.to("cuda"), list(range(0, 150, 10)) + [5], 6)
    params = {}
    for compiled in (False, True):
        r = _runner(hopper_like, tmp_path / str(compiled), graph=False, compile=compiled)
        assert (r.loss_fn != r.agent.losses) is compiled  # bound methods compare equal, not identical
        for _ in range(5):
            out = r.train_step(fixed)
        assert torch.isfinite(out["loss"])
        params[compiled] = torch.cat([p.detach().flatten() for p in r.agent.parameters()])
    torch.testing.assert_close(params[True], params[False], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind,disc", [("s4d", "zoh"), ("s5", "bilinear")])
def test_s4_backbone_on_cuda(kind, disc):
    """S4Backbone on CUDA (the Triton linear scan, complex64) with episode resets: forward equals steps, and both
    equal the float64 CPU model; the gradients of the parameters too."""
    from seqrl.nn.s4 import S4Backbone

    torch.manual_seed(0)
    m = S4Backbone(32, 2, d_state=16, kind=kind, discretization=disc).eval()
    ref = S4Backbone(32, 2, d_state=16, kind=kind, discretization=disc).eval()
    ref.load_state_dict(m.state_dict())
    m, ref = m.cuda(), ref.double()
    x = torch.randn(4, 300, 32)
    reset = torch.zeros(4, 300, dtype=torch.bool)
    reset[1, 100] = reset[2, 0] = reset[3, 299] = True
    y, _ = m(x.cuda(), reset=reset.cuda())
    y_ref, _ = ref(x.double(), reset=reset)
    torch.testing.assert_close(y.double().cpu(), y_ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ys, _ = step_through(m, x.cuda(), m.initial_state(4, "cuda"), reset.cuda())
    torch.testing.assert_close(ys, y.detach(), atol=1e-4, rtol=1e-4)
    y.square().mean().backward()
    y_ref.square().mean().backward()
    for (name, p), p_ref in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.double().cpu(), p_ref.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_linear_scan_on_cuda_takes_conjugated_inputs_and_gradients():
    """The Triton kernels read complex tensors as float pairs: a conjugated input and a gradient through a .conj()
    taken downstream are resolved before they reach them."""
    from seqrl.kernels.scan import linear_scan, linear_scan_ref

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 50, generator=g, dtype=torch.float64) * 0.9 * torch.exp(1j * torch.randn(2, 3, 50, generator=g,
                                                                                                  dtype=torch.float64))
    x = torch.randn(2, 3, 50, generator=g, dtype=torch.complex128)
    leaves = [t.to(torch.complex64).cuda().requires_grad_() for t in (a, x)]
    ref_leaves = [t.clone().requires_grad_() for t in (a, x)]
    out = linear_scan(leaves[0].conj(), leaves[1])
    ref = linear_scan_ref(ref_leaves[0].conj(), ref_leaves[1])
    torch.testing.assert_close(out.cpu().to(ref.dtype), ref.detach(), atol=1e-4, rtol=1e-4)
    grads = torch.autograd.grad(out.conj().real.sum() + out.imag.square().sum(), leaves)
    grads_ref = torch.autograd.grad(ref.conj().real.sum() + ref.imag.square().sum(), ref_leaves)
    for gr, gr_ref in zip(grads, grads_ref):
        torch.testing.assert_close(gr.cpu().to(gr_ref.dtype), gr_ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- world models and the agent on them
WM_TINY = {"d_model": 16, "n_layers": 1, "d_state": 4, "n_heads": 2, "z_groups": 3, "z_classes": 4, "embed_dim": 16,
           "hidden": 16, "seq_len": 8}


def _wm_runner(store, tmp_path, graph, agent):
    """A tiny world model (agent "s4wm", "rssm", "twm") or world-model agent ("s4wm_agent_offline" and
    "dreamer_discrete" on S4, "dreamer_gru") on the CUDA store, through the Trainer, with or without its CUDA graph."""
    from seqrl.policies import policy_class

    if agent.startswith("dreamer") or agent.endswith("offline"):
        backbone = "gru" if agent == "dreamer_gru" else "s4"
        over = {"policy": {"world_model": WM_TINY | {"backbone": backbone}, "horizon": 4, "starts": 2, "hidden": 16}}
        name = "s4wm_agent_offline"
    else:
        over, name = {"policy": dict(WM_TINY)}, agent
    over |= {"source": {"batch_size": 4}, "trainer": {"device": "cuda", "cuda_graph": graph, "amp": False, "lr": 1e-3,
                                                      "warmup_steps": 2, "eval_episodes": 0, "checkpoint_every": 0}}
    preset = load_agent(name, over)
    env = dataclasses.replace(load_env("hopper"), max_episode_steps=100)
    torch.manual_seed(0)
    policy = policy_class(preset.agent)(preset.policy, TaskSpec.from_store(store, env))
    return Trainer(policy, DatasetSource(preset.source, store), preset, tmp_path / f"{agent}_graph{graph}")


@pytest.fixture
def discrete_like():
    import gymnasium as gym

    eps = make_episodes([50, 70, 30])
    for e in eps:
        e["act"] = (e["act"][:, 0] > 0).astype(np.int64) + (e["act"][:, 0] > 0.5)
    return ReplayStore.from_episodes(eps, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(3))


@pytest.fixture
def pinned_draws(monkeypatch):
    """Latents and actions at fixed points of their distributions (gradients still through them): graph and eager
    updates then compute the same numbers."""
    import seqrl.policies.dreamer as dreamer_module
    import seqrl.policies.world_model as wm_module

    for mod in (wm_module, dreamer_module):
        monkeypatch.setattr(mod, "sample_categorical", lambda p: p.argmax(-1))
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.full_like(x, 0.3))
    monkeypatch.setattr(torch.distributions.Normal, "rsample", lambda d, shape=(): d.mean + 0.3 * d.stddev)


@pytest.mark.parametrize("agent", ["s4wm", "rssm", "twm", "s4wm_agent_offline", "dreamer_gru", "dreamer_discrete"])
def test_world_model_graph_updates_equal_eager_updates(hopper_like, discrete_like, tmp_path, monkeypatch, pinned_draws,
                                                      agent):
    """World models (S4, GRU, transformer) and the world-model agent (imagination, actor, critic, slow critic,
    return percentiles, three optimiser groups) under the Trainer's CUDA graph: on a fixed batch, 10 graph-mode
    updates give the losses and parameters of 10 eager ones. Draws are made deterministic (latents and actions at
    fixed points of their distributions, gradients still through them), so that the two modes compute the same;
    the next test samples inside the graph."""
    store = (discrete_like if agent == "dreamer_discrete" else hopper_like).to("cuda")
    params, losses = {}, {}
    fixed = None
    for graph in (False, True):
        r = _wm_runner(store, tmp_path, graph, agent)
        if fixed is None:
            fixed = r.agent.sample(store, 4, None)
        monkeypatch.setattr(r.agent, "sample", lambda store, b, generator=None: fixed)
        assert r.use_graph is graph
        losses[graph] = []
        while r.step < 10:
            out = r.iteration()[-1]
            losses[graph].append(float(out["loss"]))
        assert (r._graph is not None) is graph
        assert all(torch.isfinite(v).all() for v in out.values())
        params[graph] = torch.cat([p.detach().flatten() for p in r.agent.parameters()])
    torch.testing.assert_close(losses[True], losses[False], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(params[True], params[False], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("agent", ["s4wm", "s4wm_agent_offline"])
def test_world_model_learns_under_a_cuda_graph(hopper_like, tmp_path, agent):
    """Sampling inside the graph (default CUDA generator): the world model's loss falls over 150 replays."""
    r = _wm_runner(hopper_like.to("cuda"), tmp_path, True, agent)
    first = float(r.iteration()[0]["loss_recon"])
    outs = [float(r.iteration()[0]["loss_recon"]) for _ in range(150)]
    assert r._graph is not None and r.step == 151
    assert np.mean(outs[-20:]) < 0.8 * first


@pytest.mark.parametrize("agent", ["s4wm_agent", "dreamer"])
def test_online_graph_updates_equal_eager_updates(tmp_path, pinned_draws, agent):
    """The online world-model agent on CartPole (S4 and GRU): its replay grows, so batches are sampled outside
    the graph and copied into the captured batch (`copy_batch`). One collection's 8 updates (3 eager warm-ups,
    the capture, 4 replays on other batches) equal 8 eager updates, with the draws pinned (`pinned_draws`); the data
    are the same in both modes (collected before the first update) and so are the batches (the trainer's
    generator)."""
    from seqrl.runners.sources import EnvSource, resolve_env

    env = resolve_env("CartPole-v1", {})
    wm = [f"policy.world_model.{k}={v}" for k, v in (WM_TINY | {"z_dim": 4}).items()]
    params, losses = {}, {}
    for graph in (False, True):
        preset = load_agent(agent, parse_overrides(wm + [
            "policy.horizon=4", "policy.starts=2", "policy.hidden=16", "source.n_envs=2", "source.n_steps=32",
            "source.batch_size=4", "source.learning_starts=1", "source.train_ratio=4", "source.env_steps=64",
            "trainer.device=cuda", f"trainer.cuda_graph={str(graph).lower()}", "trainer.amp=false",
            "trainer.warmup_steps=2", "trainer.eval_episodes=0", "trainer.checkpoint_every=0"]))
        torch.manual_seed(0)
        r = Trainer(policy_class("dreamer")(preset.policy, TaskSpec.from_env(env)), EnvSource(preset.source, env),
                    preset, tmp_path / f"{agent}_{graph}")
        assert r.use_graph is graph and r.source.fixed_batches
        outs = []
        while not r.done():
            outs += r.iteration()
        assert r.step == 8 and (r._graph is not None) is graph
        losses[graph] = [float(o["loss"]) for o in outs]
        params[graph] = torch.cat([p.detach().flatten() for p in r.agent.parameters()])
    assert len(set(losses[True])) == 8  # each replay's scalars are its own, not the last one's
    torch.testing.assert_close(losses[True], losses[False], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(params[True], params[False], atol=1e-4, rtol=1e-3)


def _graph_sac(monkeypatch, graph: bool):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    from seqrl.data.sac import GraphSAC

    torch.manual_seed(0)
    model = GraphSAC("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), seed=0, device="cuda",
                     learning_starts=0, batch_size=32)
    model.set_logger(Logger(folder=None, output_formats=[]))
    if not graph:
        monkeypatch.setattr(model, "_graphable", lambda: False)
    return model


def test_graph_sac_steps_equal_eager_steps(monkeypatch):
    """GraphSAC on CUDA: 10 gradient steps (3 eager warm-ups, capture, replays) on a fixed batch, with the
    actor's draws pinned, give the parameters of 10 eager steps; the test in test_sac.py ties eager to SB3."""
    monkeypatch.setattr(torch.distributions.Normal, "rsample", lambda d, shape=(): d.mean + 0.3 * d.stddev)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(32, 3, generator=g).cuda()
    batch = None
    params = {}
    for graph in (False, True):
        model = _graph_sac(monkeypatch, graph)
        if batch is None:
            batch = model.replay_buffer.sample(32)._replace(
                observations=obs, next_observations=obs + 0.1, actions=torch.rand(32, 1, generator=g).cuda() * 2 - 1,
                rewards=torch.randn(32, 1, generator=g).cuda(), dones=(torch.rand(32, 1, generator=g) < 0.2).float().cuda())
        monkeypatch.setattr(model.replay_buffer, "sample", lambda *a, **kw: batch)
        model.train(gradient_steps=10, batch_size=32)
        assert (model._graph is not None) is graph
        params[graph] = torch.cat([p.detach().flatten() for p in model.policy.parameters()] + [model.log_ent_coef.detach()])
    torch.testing.assert_close(params[True], params[False], atol=1e-5, rtol=1e-4)


def test_graph_sac_learns_pendulum(monkeypatch):
    """Sampling inside the graph from a growing device buffer: SAC solves Pendulum-v1 in 6,000 steps."""
    model = _graph_sac(monkeypatch, True)
    model.learning_starts = 500
    model.learn(6000)
    assert model._graph is not None
    returns = [e["r"] for e in list(model.ep_info_buffer)[-5:]]
    assert np.mean(returns) > -400, returns  # random actions: about -1,200
