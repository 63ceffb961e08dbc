"""World models (seqrl/policies/world_model.py): imagination by `step` equals one `forward` over the same latents
(S4, GRU, transformer, float64); KL balancing and free bits against a hand computation; episode starts reset the
backbone (one sequence with a reset equals two sequences); the loss falls through the real Trainer on image data;
vector and image observations; imagine_checkpoint's files; bad inputs."""

import dataclasses
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import make_episodes
from seqrl.data.store import ReplayStore
from seqrl.errors import CheckpointError, DataError, PresetError
from seqrl.policies import world_model
from seqrl.policies.base import TaskSpec
from seqrl.policies.world_model import (WorldModel, WorldModelConfig, imagine, kl_terms, latent_kl, latent_sample,
                                        symlog, world_model_loss)
from seqrl.presets import EnvPreset, load_agent
from seqrl.runners.sources import DatasetSource
from seqrl.runners.trainer import Trainer

BACKBONES = ["s4", "gru", "transformer"]
TINY = dict(d_model=16, n_layers=1, d_state=8, n_heads=2, embed_dim=16, hidden=16, z_dim=4, z_groups=3, z_classes=4,
            seq_len=12)


def vector_store(lengths=(20, 15, 25), act="box"):
    eps = make_episodes(list(lengths), obs_dim=3, act_dim=2, seed=0)
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    if act == "discrete":
        for ep in eps:
            ep["act"] = (ep["act"][:, 0] > 0).astype(np.int64)
        space = gym.spaces.Discrete(2)
    return ReplayStore.from_episodes(eps, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), space,
                                     meta={"dataset_id": "seqrl/unit/vector-v0"})


def image_store(width=4, n_steps=240, seed=0):
    from seqrl.data.wm_collect import distracting_memory_episodes

    eps = distracting_memory_episodes(width, n_steps, seed, n_envs=2)
    return ReplayStore.from_episodes(eps, gym.spaces.Box(0, 255, (32, 32, 3), np.uint8), gym.spaces.Discrete(2),
                                     meta={"dataset_id": "seqrl/unit/dm-v0"})


ENV = EnvPreset(name="unit", env_id="seqrl/DistractingMemory-v0", max_episode_steps=50, env_kwargs={"width": 4})


def model(store, **kw):
    torch.manual_seed(0)
    return WorldModel(WorldModelConfig(**(TINY | kw)), TaskSpec.from_store(store, ENV))


def f64(m):
    """The model in float64 and eval mode; the tokenizer's embedding stays float32 (it casts its input)."""
    m = m.double().eval()
    m.encoder.float()
    return m


# ------------------------------------------------------------------------------------- imagination
@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_imagination_by_step_equals_forward(backbone, latent):
    store = vector_store()
    # C + H = 18: the S4 recomputation takes its FFT path (>= 16 steps), the context its scan, imagination `step`;
    # the transformer's window of 5 slides inside it
    m = f64(model(store, backbone=backbone, latent=latent, window=5))
    C, H = 10, 8
    from seqrl.data.samplers import windows_at

    b = windows_at(store, [0, 35], C + H)  # the first and third episodes: 20 and 25 steps
    torch.manual_seed(1)
    out = imagine(m, b.obs[:, :C], b.act, H, sample=True)
    first = torch.zeros(2, C + H, dtype=torch.bool)
    first[:, 0] = True
    again, _ = m.hidden(out["z"], m.action_input(b.act), first)  # one parallel pass over the same latents
    assert out["h"].dtype == torch.float64 and out["h"].shape == (2, C + H, 16)
    torch.testing.assert_close(out["h"], again, rtol=0, atol=1e-10)
    # the imagined latents came from the prior: they are not the posterior of the real observations
    post = m.posterior_pass(b.obs, b.act, first, sample=False)["z"]
    assert (out["z"][:, C:] - post[:, C:]).abs().max() > 1e-3
    assert out["obs"].shape == (2, H, 3) and out["reward"].shape == (2, H) and out["recon"].shape == (2, C, 3)


# --------------------------------------------------------------------------------------- KL terms
def test_kl_balance_and_free_bits_by_hand():
    cfg = WorldModelConfig(**TINY, kl_dyn=0.5, kl_rep=0.1, free_bits=1.0)
    g = torch.Generator().manual_seed(0)
    post = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    prior = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    prior[0, 0] = post[0, 0] + 1e-3  # a step whose KL is under the free bits
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    # hand: Gaussians with std = softplus(raw) + 0.1, KL summed over 4 dims
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    kl = np.zeros((2, 3))
    for i in range(2):
        for t in range(3):
            for k in range(4):
                mq, sq = post[i, t, k].item(), sp(post[i, t, 4 + k].item()) + 0.1
                mp, s_p = prior[i, t, k].item(), sp(prior[i, t, 4 + k].item()) + 0.1
                kl[i, t] += math.log(s_p / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * s_p ** 2) - 0.5
    assert kl[0, 0] < 1.0 < kl[0, 1]
    clipped = np.maximum(kl, 1.0)[mask.numpy()].mean()
    terms = kl_terms(post, prior, mask, cfg)
    assert terms["loss_kl_dyn"].item() == pytest.approx(0.5 * clipped, rel=1e-12)
    assert terms["loss_kl_rep"].item() == pytest.approx(0.1 * clipped, rel=1e-12)
    assert terms["kl"].item() == pytest.approx(kl[mask.numpy()].mean(), rel=1e-12)
    # balancing: the dyn term trains only the prior, the rep term only the posterior; free bits stop gradients
    for name, trains, frozen in (("loss_kl_dyn", 1, 0), ("loss_kl_rep", 0, 1)):
        p, q = post.clone().requires_grad_(), prior.clone().requires_grad_()
        kl_terms(p, q, mask, cfg)[name].backward()
        grads = (p.grad, q.grad)
        assert grads[frozen] is None or not grads[frozen].any()
        assert grads[trains][0, 1].abs().sum() > 0 and not grads[trains][0, 0].any()  # under free bits: no gradient
        assert not grads[trains][1, 2].any()  # masked step


def test_categorical_kl_with_unimix_by_hand():
    cfg = WorldModelConfig(**TINY, latent="categorical", unimix=0.01)  # 3 groups of 4 classes
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    kl = 0.0
    for grp in range(3):
        pa = np.exp(a[4 * grp : 4 * grp + 4].numpy()); pa = 0.99 * pa / pa.sum() + 0.01 / 4  # noqa: E702
        pb = np.exp(b[4 * grp : 4 * grp + 4].numpy()); pb = 0.99 * pb / pb.sum() + 0.01 / 4  # noqa: E702
        kl += float((pa * np.log(pa / pb)).sum())
    assert latent_kl(a, b, cfg).item() == pytest.approx(kl, rel=1e-12)


# ---------------------------------------------------------------------------------- episode starts
@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_episode_start_resets_like_two_sequences(backbone):
    store = vector_store()
    m = f64(model(store, backbone=backbone, window=20))
    from seqrl.data.samplers import windows_at

    x, y = windows_at(store, [0], 7), windows_at(store, [20], 5)  # two episodes' beginnings
    obs, act = torch.cat([x.obs, y.obs], 1), torch.cat([x.act, y.act], 1)
    first = torch.zeros(1, 12, dtype=torch.bool)
    first[0, 0] = first[0, 7] = True
    joined = m.posterior_pass(obs, act, first, sample=False)
    apart = [m.posterior_pass(b.obs, b.act, b.first, sample=False) for b in (x, y)]
    for k in ("h", "z", "prior"):
        torch.testing.assert_close(joined[k], torch.cat([apart[0][k], apart[1][k]], 1), rtol=0, atol=1e-10)
    # without the flag the second part sees the first: the check above can fail
    first[0, 7] = False
    carried = m.posterior_pass(obs, act, first, sample=False)
    assert (carried["h"][:, 7:] - apart[1]["h"]).abs().max() > 1e-4


# ------------------------------------------------------------------------------ training, observations
def test_loss_falls_through_the_trainer_on_images(tmp_path):
    store = image_store()
    preset = load_agent("s4wm_small", {"policy": {"d_model": 32, "embed_dim": 32, "hidden": 32, "d_state": 8,
                                                   "seq_len": 12},
                                        "source": {"batch_size": 4},
                                        "trainer": {"steps": 30, "log_every": 1, "warmup_steps": 1, "lr": 2e-3,
                                                    "threads": 1}})
    torch.manual_seed(0)
    agent = WorldModel(preset.policy, TaskSpec.from_store(store, ENV))
    tr = Trainer(agent, DatasetSource(preset.source, store), preset, tmp_path)
    losses = []
    orig = tr._log
    tr._log = lambda vals: (losses.append(vals["loss"]), orig(vals))
    assert tr.run() == {}  # eval_episodes = 0: no evaluation
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert (tmp_path / "checkpoint.pt").is_file()
    assert store.observation_space.dtype == np.uint8


@pytest.mark.parametrize("backbone,latent,act", [("gru", "categorical", "discrete"), ("transformer", "gaussian", "box")])
def test_vector_observations_train(backbone, latent, act):
    store = vector_store(act=act)
    m = model(store, backbone=backbone, latent=latent, free_bits=0.0)  # free bits would stop the prior's gradient
    b = m.sample(store, 4, torch.Generator().manual_seed(0))
    terms = world_model_loss(m, b)
    assert {"loss_recon", "loss_reward", "loss_cont", "loss_kl_dyn", "loss_kl_rep"} <= set(terms)
    sum(v for k, v in terms.items() if k.startswith("loss_")).backward()
    for part in (m.prior[0], m.posterior[0], m.decoder[0], m.reward_head[0], m.cont_head[0], m.inp[0]):
        assert part.weight.grad.abs().sum() > 0
    # rewards are regressed as symlog(r) in the env's units (not the env preset's return-token reward_scale)
    with torch.no_grad():
        m.reward_head[-1].weight.zero_(), m.reward_head[-1].bias.zero_()
    want = (torch.sign(b.rew) * torch.log1p(b.rew.abs())).square().mean()
    assert world_model_loss(m, b)["loss_reward"].item() == pytest.approx(want.item(), rel=1e-5) and want > 0.1
    torch.manual_seed(1)
    plain = world_model_loss(m, b)
    assert plain["reward_weight"].item() == 1.0  # reward_loss_scale 1: DreamerV3's fixed weight
    m.config = dataclasses.replace(m.config, reward_loss_scale=30.0)  # the reward term's largest weight, only its
    torch.manual_seed(1)  # the same latent draws
    scaled = world_model_loss(m, b)
    assert 1.5 < scaled["reward_weight"].item() < 30  # 4 / var(symlog r) of these rewards, inside the bounds
    assert scaled["loss_reward"].item() == pytest.approx(scaled["reward_weight"].item() * want.item(), rel=1e-5)
    for k in ("loss_recon", "loss_cont", "loss_kl_dyn", "loss_kl_rep"):
        assert scaled[k].item() == pytest.approx(plain[k].item(), rel=1e-6)
    with pytest.raises(TypeError, match="world model"):
        m.act(b.obs[:, 0], None)
    with pytest.raises(PresetError, match="set trainer.eval_episodes = 0"):
        load_agent("s4wm_small", {"trainer": {"eval_episodes": 5}})


def test_reward_weight_follows_the_rewards_spread():
    """reward_weight: 4 / the variance of symlog(r) from bias-corrected moving averages of the training batches'
    masked moments, held in [1, reward_loss_scale], against a float64 loop; frozen outside training."""
    m = model(vector_store(), reward_loss_scale=1000.0)
    g = torch.Generator().manual_seed(0)
    d, avg, n_up = world_model.REWARD_DECAY, np.zeros(3), 0

    def want(r, mask):
        """The loop's weight after r, mask (numpy) join the average."""
        nonlocal avg, n_up
        x = r[mask].astype(np.float64)
        avg = d * avg + (1 - d) * np.array([1.0, x.mean(), (x * x).mean()])
        n_up += 1
        mean, sq = avg[1] / (1 - d ** n_up), avg[2] / (1 - d ** n_up)
        return float(np.clip(4 / (sq - mean ** 2), 1, 1000))

    seen = []
    for scale in (0.01, 0.4, 0.1, 6.0):  # weights at the largest, between the bounds twice, at the smallest
        r = torch.randn(4, 9, generator=g) * scale
        mask = torch.rand(4, 9, generator=g) < 0.7
        got = world_model.reward_weight(m, r, mask)
        assert got.item() == pytest.approx(want(r.numpy(), mask.numpy()), rel=1e-4)
        seen.append(got.item())
    assert seen[0] == 1000 and all(1.5 < x < 1000 for x in seen[1:3]) and seen[3] == 1
    frozen = m.reward_moments.clone()
    r = torch.randn(4, 9, generator=g)
    with torch.no_grad():  # an evaluation pass reads the averages and leaves them
        assert world_model.reward_weight(m, r * 0, torch.ones(4, 9, dtype=torch.bool)).item() == got.item()
    m.eval()
    assert world_model.reward_weight(m, r * 0, torch.ones(4, 9, dtype=torch.bool)).item() == got.item()
    assert torch.equal(m.reward_moments, frozen)
    fresh = model(vector_store(), reward_loss_scale=1000.0).eval()  # no average yet: the batch's own spread
    one = torch.ones(2, 50, dtype=torch.bool)
    r = torch.linspace(-0.2, 0.2, 100).reshape(2, 50)
    assert fresh.reward_moments.abs().sum() == 0
    assert world_model.reward_weight(fresh, r, one).item() == pytest.approx(4 / r.double().var(unbiased=False).item(),
                                                                            rel=1e-4)
    assert world_model.reward_weight(fresh, torch.full((2, 50), 0.7), one).item() == 1000  # constant: the largest
    assert world_model.reward_weight(fresh, r * 100, one).item() == 1  # spread wider than 2: the smallest
    fresh.config = dataclasses.replace(fresh.config, reward_loss_scale=0.5)
    assert world_model.reward_weight(fresh, r, one).item() == 0.5  # a largest weight below 1 is the weight


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_reward_weight_above_one_skips_the_current_latent(latent):
    """The reward loss is the weight times the squared error, but only the weight's part up to 1 reaches the current
    latent z_t: through h_t (the backbone) and the heads it counts in full. Float64 gradients against the same
    error at weight 1, taken at h and z as leaves."""
    store = vector_store()
    m = f64(model(store, latent=latent, reward_loss_scale=50.0)).train()
    b = m.sample(store, 4, torch.Generator().manual_seed(0))
    out = m.posterior_pass(b.obs, b.act, b.first)
    h, z = (out[k].detach().requires_grad_() for k in ("h", "z"))
    terms = world_model_loss(m, b, out | {"h": h, "z": z})
    w = terms["reward_weight"].item()
    assert 2 < w <= 50  # the test's rewards are sparse: a weight far from 1
    mask = b.mask.double()
    rew, _ = m.reward_cont(h, z, out["a"])
    plain = (((rew - symlog(b.rew.double())) ** 2).mean(0) * mask).sum() / mask.sum()
    assert terms["loss_reward"].item() == pytest.approx(w * plain.item(), rel=1e-9)
    gh, gz, gw = torch.autograd.grad(terms["loss_reward"], [h, z, m.reward_head[0].weight])
    ph, pz, pw = torch.autograd.grad(plain, [h, z, m.reward_head[0].weight])
    assert pz.abs().sum() > 0 and torch.allclose(gz, pz, rtol=1e-9, atol=1e-12)  # z: at weight 1
    assert torch.allclose(gh, w * ph, rtol=1e-9, atol=1e-12) and torch.allclose(gw, w * pw, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backbone,latent", [("s4", "gaussian"), ("transformer", "categorical")])
def test_prior_input_pass_by_hand(backbone, latent):
    """prior_input_rate: a second backbone pass with some inputs the prior's mode, its reward and continuation
    losses equal to the same computed by hand from the swap mask's draw."""
    store = vector_store(act="discrete")
    m = model(store, backbone=backbone, latent=latent, prior_input_rate=0.5, reward_loss_scale=3.0)
    b = m.sample(store, 4, torch.Generator().manual_seed(0))
    out = m.posterior_pass(b.obs, b.act, b.first)
    torch.manual_seed(5)
    terms = world_model_loss(m, b, out)
    torch.manual_seed(5)  # the swap mask's draw (the prior's mode draws nothing)
    swap = torch.rand(b.mask.shape) < 0.5
    assert 0 < swap.sum() < swap.numel()
    z = torch.where(swap[..., None], latent_sample(out["prior"], m.config, False), out["z"])
    h, _ = m.hidden(z, out["a"], b.first)
    _, rew, cont = m.heads(h, out["z"], out["a"])
    mask = b.mask.float()
    assert 1 < terms["reward_weight"] <= 3  # both passes' reward losses take this weight
    want_r = terms["reward_weight"] * (((rew - symlog(b.rew)) ** 2).mean(0) * mask).sum() / mask.sum()
    want_c = (torch.nn.functional.binary_cross_entropy_with_logits(cont, (~b.term).float(), reduction="none")
              * mask).sum() / mask.sum()
    assert terms["loss_reward_prior"].item() == pytest.approx(want_r.item(), rel=1e-5)
    assert terms["loss_cont_prior"].item() == pytest.approx(want_c.item(), rel=1e-5)
    assert abs(terms["loss_reward_prior"].item() - terms["loss_reward"].item()) > 1e-4  # another pass: can differ
    # its gradient trains the backbone and the heads, not the prior (whose latents it reads detached)
    grads = torch.autograd.grad(terms["loss_reward_prior"],
                                [m.prior[0].weight, m.reward_head[0].weight, m.inp[0].weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0
    plain = world_model_loss(model(store, backbone=backbone, latent=latent), b)
    assert not {"loss_reward_prior", "loss_cont_prior"} & set(plain)
    with pytest.raises(ValueError, match="prior_input_rate is for the S4 and transformer"):
        WorldModelConfig(**(TINY | {"backbone": "gru", "prior_input_rate": 0.5}))
    with pytest.raises(ValueError, match="prior_input_rate must be in"):
        WorldModelConfig(**(TINY | {"prior_input_rate": 1.5}))


# --------------------------------------------------------------------------------- imagine_checkpoint
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = image_store(width=3, n_steps=120)
    path = tmp_path_factory.mktemp("wm")
    preset = load_agent("twm_small", {"policy": {"d_model": 16, "embed_dim": 16, "hidden": 16, "seq_len": 8},
                                       "source": {"batch_size": 2}, "trainer": {"steps": 2, "threads": 1}})
    agent = WorldModel(preset.policy, TaskSpec.from_store(store, ENV))
    Trainer(agent, DatasetSource(preset.source, store), preset, path).run()
    return path / "checkpoint.pt", store


def test_imagine_checkpoint_writes_strip_plot_json_gif(trained, tmp_path):
    from seqrl.data.samplers import windows_at
    from seqrl.runners.imagine import constant_sign_accuracy, imagine_checkpoint, world_model_from_checkpoint

    ckpt, store = trained
    res = imagine_checkpoint(ckpt, context=2, horizon=3, out=tmp_path, dataset=store, sequences=3, show=3)
    for name in ("strip.png", "error.png", "imagine.json", "imagine.gif"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "imagine.json").read_text())
    assert saved["backbone"] == "transformer" and len(saved["mse_per_step"]) == 3 and saved["sequences"] == 3
    assert saved["reward_steps"] == 3 and 0 <= saved["reward_accuracy"] <= 1  # the doors step is step 4 of 5
    assert res["mse_mean"] == pytest.approx(np.mean(saved["mse_per_step"]))
    # the posterior's reward sign at the same doors steps, every frame real: the model's memory without imagination
    model, _ = world_model_from_checkpoint(ckpt)
    batch = windows_at(store, store.ep_start[saved["episodes"]], 5)
    first = torch.zeros(3, 5, dtype=torch.bool)
    first[:, 0] = True
    with torch.no_grad():
        post = model.posterior_pass(batch.obs, batch.act, first, sample=False)
        rew = model.heads(post["h"], post["z"], post["a"])[1].mean(0)[:, 4]  # symlog units: the same sign
    want = (torch.sign(rew) == torch.sign(batch.rew[:, 4])).float().mean().item()
    assert saved["reward_accuracy_posterior"] == pytest.approx(want)
    # reference levels with no model: the last context frame held, and the more common reward sign
    real, last = batch.obs[:, 2:].float() / 255, batch.obs[:, 1:2].float() / 255
    hold = ((real - last) ** 2).flatten(2).mean(-1).mean(0)
    assert saved["mse_hold_per_step"] == pytest.approx(hold.tolist(), rel=1e-5) and hold[-1] > 0
    assert saved["mse_hold_mean"] == pytest.approx(hold.mean().item(), rel=1e-5)
    pos = (batch.rew[:, 4] > 0).float().mean().item()
    assert saved["reward_accuracy_constant"] == pytest.approx(max(pos, 1 - pos))
    assert constant_sign_accuracy(torch.tensor([1.0, -1.0, -2.0])) == pytest.approx(2 / 3)
    assert constant_sign_accuracy(torch.zeros(0)) is None


def test_bad_inputs(trained, tmp_path):
    from seqrl.runners.imagine import imagine_checkpoint

    ckpt, store = trained
    with pytest.raises(DataError, match="longer than every episode"):  # episodes have 5 steps
        imagine_checkpoint(ckpt, context=6, horizon=1, out=tmp_path, dataset=store)
    with pytest.raises(DataError, match=r"context 3 \+ horizon 3 = 6 steps is longer"):
        imagine_checkpoint(ckpt, context=3, horizon=3, out=tmp_path, dataset=store)
    for h in (0, -2):
        with pytest.raises(ValueError, match="horizon must be an integer >= 1"):
            imagine_checkpoint(ckpt, context=2, horizon=h, out=tmp_path, dataset=store)
    # frames of another shape than the model's (and the env's)
    eps = [{k: (v[:, :16, :16] if k == "obs" else v) for k, v in ep.items()}
           for ep in __import__("seqrl.data.wm_collect", fromlist=["x"]).distracting_memory_episodes(3, 20, 0, n_envs=1)]
    small = ReplayStore.from_episodes(eps, gym.spaces.Box(0, 255, (16, 16, 3), np.uint8), gym.spaces.Discrete(2))
    with pytest.raises(DataError, match=r"frames \(16, 16, 3\) against \(32, 32, 3\)"):
        imagine_checkpoint(ckpt, context=2, horizon=1, out=tmp_path, dataset=small)
    from seqrl.data.wm_collect import check_frames

    with pytest.raises(DataError, match=r"frames \(16, 16, 3\) uint8 differ from env"):
        check_frames(small.observation_space, store.observation_space, "x", "seqrl/DistractingMemory-v0")
    m = WorldModel(load_agent("twm_small").policy, TaskSpec.from_store(store, ENV))
    with pytest.raises(DataError, match="differ from the world model's"):
        m.sample(small, 2)
    # NaN in decoded frames: named by step
    with torch.no_grad():
        m.decoder.fc.bias[0] = float("nan")
    b = __import__("seqrl.data.samplers", fromlist=["x"]).windows_at(store, [0], 5)
    with pytest.raises(FloatingPointError, match="imagined step 0 \\(step 2 of the sequence"):
        imagine(m, b.obs[:, :2], b.act, 3)
    # a checkpoint of an agent that is not a world model
    bad = torch.load(ckpt, weights_only=False)
    bad["agent"] = "dt"
    torch.save(bad, tmp_path / "dt.pt")
    with pytest.raises(CheckpointError, match="holds agent 'dt', neither a world model"):
        imagine_checkpoint(tmp_path / "dt.pt", context=2, horizon=1, out=tmp_path, dataset=store)


# ------------------------------------------------------------------------------------ env and dataset
def test_distracting_memory_pays_by_the_cue():
    import seqrl.envs  # noqa: F401
    from seqrl.envs.image_memory import CUE_COLOURS

    env = gym.make("seqrl/DistractingMemory-v0", width=5)
    for seed, pick_cue in ((0, True), (1, False)):
        obs, info = env.reset(seed=seed)
        assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
        assert (obs[16, 16] == CUE_COLOURS[info["cue"]]).all()  # the cue, shown at the first step only
        for t in range(6):  # hallway and the step onto the doors: actions do nothing, no reward
            obs, r, term, trunc, _ = env.step(1 - info["cue"])
            assert r == 0.0 and not term
            assert not any((obs[16, 16] == c).all() for c in CUE_COLOURS[:2]) or t == 5
        obs, r, term, _, end = env.step(info["cue"] if pick_cue else 1 - info["cue"])
        assert term and r == (1.0 if pick_cue else -1.0) and end["success"] == pick_cue


def test_dataset_keeps_uint8_frames(minari_root):
    from seqrl.data.wm_collect import build_distracting_memory, load_image_store

    did = build_distracting_memory(3, 60, seed=0)
    store = load_image_store(did, env_kwargs={"width": 3})
    assert store.observation_space.dtype == np.uint8 and store.episode_lengths.tolist()[0] == 5
    b = WorldModel(load_agent("s4wm_small").policy, TaskSpec.from_store(store, ENV)).sample(store, 2)
    assert b.obs.dtype == torch.uint8 and b.obs.shape == (2, 32, 32, 32, 3) and b.first.any()
    assert build_distracting_memory(3, 60, seed=0) == did  # the same recipe: reused
    with pytest.raises(DataError, match="another recipe"):
        build_distracting_memory(3, 90, seed=0)


def test_collect_train_imagine_through_the_cli(minari_root, tmp_path):
    from typer.testing import CliRunner

    from seqrl.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["collect", "--env", "distracting-memory", "--quality", "random", "--set", "width=4",
                              "--set", "n_steps=200"])
    assert res.exit_code == 0, res.output
    did = res.output.split("dataset ")[1].split(" is at")[0].strip()
    run = tmp_path / "wm"
    res = runner.invoke(app, ["train", "--agent", "s4wm_small", "--dataset", did, "--env", "seqrl/DistractingMemory-v0",
                              "--run-dir", str(run), "--set", "trainer.steps=2", "--set", "source.batch_size=2",
                              "--set", "policy.d_model=16", "--set", "policy.embed_dim=16", "--set", "policy.hidden=16",
                              "--set", "policy.seq_len=4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["imagine", str(run / "checkpoint.pt"), "--context", "2", "--horizon", "3",
                              "--sequences", "2", "--out", str(tmp_path / "im")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "im" / "strip.png").stat().st_size > 1000 and (tmp_path / "im" / "imagine.json").is_file()
    assert json.loads((tmp_path / "im" / "imagine.json").read_text())["trained_seq_len"] == 4
    assert "runs to step 5, past the 4-step sequences this model trained on" in " ".join(res.output.split())
    res = runner.invoke(app, ["imagine", str(run / "checkpoint.pt"), "--context", "2", "--horizon", "2",
                              "--sequences", "2", "--out", str(tmp_path / "im2")])
    assert res.exit_code == 0 and "past the" not in res.output, res.output
    res = runner.invoke(app, ["imagine", str(run / "checkpoint.pt"), "--horizon", "0", "--out", str(tmp_path / "im")])
    assert res.exit_code == 2 and "horizon must be an integer >= 1" in " ".join(res.output.split())
