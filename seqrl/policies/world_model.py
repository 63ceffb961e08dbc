"""A latent world model with a swappable sequence backbone: S4WM (Deng, Park, Ahn 2023, "Facing Off World
Model Backbones: RNNs, Transformers, and S4", arXiv:2307.02064), and with the same heads and losses the RSSM
(a GRU, DreamerV3: Hafner et al. 2023, arXiv:2301.04104) and the TSSM (a causal transformer with a KV cache).

Dimension letters: B batch, K steps, C context steps, H imagined steps (horizon), d backbone width, E observation
embedding width, Z flat latent width (z_dim, or groups x classes), A action width (one-hot for Discrete).

At step t of a sequence (o_t the observation, a_t the action taken at o_t, r_t its reward, term_t its end):

    e_t = embed(o_t)                                   the shared tokenizer's observation embedding (uint8 images:
                                                       its CNN; vectors: normalised, Linear), then LayerNorm
    q(z_t | e_t)             S4WM, TSSM                posterior from the observation alone: every step in parallel
    q(z_t | h_t, e_t)        RSSM (backbone "gru")     DreamerV3's posterior, so the sequence runs step by step
    x_t = in(z_{t-1}, a_{t-1})                         zeros at an episode start (and at a sequence's first step)
    h_t = backbone(x_<=t)                              reset (state zeroed) where an episode starts (`first`)
    p(z_t | h_t)                                       prior
    o_t ~ dec(h_t, z_t)   r_t, cont_t ~ head(h_t, z_t, a_t)

Loss per step (DreamerV3's, its defaults): reconstruction (squared error summed over pixels in [0, 1] units, or
over normalised features), reward (squared error on symlog(r) = sign(r) log(1 + |r|), DreamerV3's squashing,
in the env's own units: the env preset's reward_scale is for return tokens and is not used here), continuation
(Bernoulli, target 1 - term_t), and the KL balanced and clipped by free bits:

    loss_kl_dyn = beta_dyn * max(free_bits, KL[sg(q) || p]),   loss_kl_rep = beta_rep * max(free_bits, KL[q || sg(p)])

beta_dyn 0.5, beta_rep 0.1, free bits 1 nat, per step on the KL summed over the latent, averaged after the clip.

Departure (`reward_weight`): the reward term is weighted 4 / the variance of its symlog targets over the training
batches (moving averages), held in [1, reward_loss_scale]; at reward_loss_scale 1 (the default) that is
DreamerV3's fixed 1, and the agents' 100 lets sparse rewards weigh against the decoder's summed loss. The weight's
part above 1 trains the reward heads and the backbone (so the memory that predicts a reward) but not the current
latent z_t: on Pendulum the full weight on z_t sharpened the posterior near the top away from the prior, whose
samples imagination rolls, and on most seeds the agent did not learn to hold the pendulum up (docs/history.md).

Addition, off by default (`prior_input_rate` p > 0, S4 and transformer backbones): training feeds the backbone
posterior latents only, imagination the prior's. A second backbone pass replaces each step's z_{t-1} input with
the prior's mode at that step (detached) with probability p, and adds the reward and continuation losses read from
that pass at the posterior's z_t ("loss_reward_prior", "loss_cont_prior").

Latents: a diagonal Gaussian (S4WM; std = softplus + min_std), or DreamerV3's 32 groups of 32 classes with 1%
uniform mixing and straight-through one-hot samples.

Departure, on purpose: reward and continuation of step t are read from (h_t, z_t, a_t), not from the state after
the action as Dreamer does. The store keeps an episode's last observation only as `next_obs`, so a state
"after a_t" at an episode's last step is not in the sequence, and the memory tasks pay exactly there. In
imagination the actions are given, so nothing is lost.

Imagination (`imagine`): read C context steps through the posterior (one parallel pass for S4/transformer), then
roll the prior forward H steps under given actions with `backbone.step`: O(1) per step for S4 and the GRU, O(W)
for the transformer's window. tests/test_world_model.py holds it equal to one `forward` over the same latents.

A world model has no policy: `act` raises; presets set trainer.eval_episodes = 0 (the Trainer then skips
evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.data.samplers import sequences
from seqrl.data.store import Batch, ReplayStore, is_image, same_space
from seqrl.errors import DataError
from seqrl.nn.norm import LayerNorm
from seqrl.nn.rnn import GRU
from seqrl.nn.s4 import S4Backbone
from seqrl.nn.transformer import CausalTransformer
from seqrl.policies.base import Agent, EvalProtocol, TaskSpec
from seqrl.presets import require_at_least, require_in
from seqrl.tokenizer import TrajectoryTokenizer

WORLD_MODELS = ("s4wm", "rssm", "twm")  # agent names (agents/*.toml) whose class is WorldModel
PRIOR_INPUT_LOSSES = ("loss_reward_prior", "loss_cont_prior")  # world_model_loss's terms with prior_input_rate > 0
REWARD_DECAY = 0.99  # per update: the moving averages behind `reward_weight`
REWARD_UNIT = 0.5  # `reward_weight` measures the reward error in this many standard deviations of the targets


@dataclass(frozen=True)
class WorldModelConfig:
    """Defaults: S4WM's shape at a small width; KL balancing and free bits from DreamerV3 (its Table/Appendix)."""

    # backbone
    backbone: Literal["s4", "gru", "transformer"] = "s4"
    """sequence model over (z_{t-1}, a_{t-1}): S4WM, RSSM (posterior then also reads h_t), TSSM"""
    d_model: int = 256
    """d: backbone width, the deterministic state h"""
    n_layers: int = 2
    """S4WM blocks (two S4 layers each), GRU layers, or transformer blocks"""
    d_state: int = 64
    """S4: N per channel (s4d) or P shared (s5)"""
    ssm_kind: Literal["s4d", "s5"] = "s4d"
    """S4 layer kind (seqrl/nn/s4.py)"""
    n_heads: int = 4
    """transformer heads"""
    window: int = 0
    """transformer attention window in steps; 0: seq_len (imagination beyond it slides the window)"""
    # latent
    latent: Literal["gaussian", "categorical"] = "gaussian"
    """S4WM's diagonal Gaussian, or DreamerV3's categoricals"""
    z_dim: int = 32
    """Gaussian latent dimensions"""
    z_groups: int = 32
    """categorical latent: groups (DreamerV3: 32)"""
    z_classes: int = 32
    """categorical latent: classes per group (DreamerV3: 32)"""
    unimix: float = 0.01
    """categorical: mix this much of the uniform into every group's probabilities (DreamerV3: 1%)"""
    min_std: float = 0.1
    """Gaussian: std = softplus(raw) + min_std (DreamerV2's continuous latents)"""
    # encoder, heads
    embed_dim: int = 256
    """E: observation embedding width (the tokenizer's)"""
    hidden: int = 256
    """width of the MLP heads (posterior, prior, reward, continuation, vector decoder)"""
    reward_heads: int = 1
    """reward heads, each trained on the same targets from its own initialisation: more than one is an ensemble
    whose spread measures where the model is unsure (an offline agent subtracts it, `reward_penalty`)"""
    # loss
    seq_len: int = 64
    """K: steps per training sequence (the `sequences` sampler)"""
    kl_dyn: float = 0.5
    """beta_dyn: weight of KL[sg(q) || p] (trains the prior; DreamerV3: 0.5)"""
    kl_rep: float = 0.1
    """beta_rep: weight of KL[q || sg(p)] (trains the posterior; DreamerV3: 0.1)"""
    free_bits: float = 1.0
    """KL terms below this many nats per step give no gradient (DreamerV3: 1)"""
    reward_loss_scale: float = 1.0
    """the reward loss's largest weight. The weight is 4 / the variance of the symlog(r) targets (the error in units of
    half their standard deviation), tracked over the training batches (`reward_weight`) and held
    in [1, reward_loss_scale]: at 1 it is DreamerV3's fixed 1; above 1 it does not reach the current latent z_t
    (module docstring). The decoder's loss is summed over a frame's pixels or an observation's features against one
    reward value a step, so sparse rewards (a T-maze's, DistractingMemory's cue) were drowned out at a fixed 1 and
    learned at 100, while Pendulum's dense rewards lost at a fixed 100; at 1 / variance (71) DistractingMemory's 32-wide
    hallway was lost (docs/history.md). The agents (agents/s4wm_agent.toml, dreamer.toml) use 100. DreamerV3's two-hot
    reward head in place of the squared error lost on the T-maze and CartPole (docs/history.md)"""
    prior_input_rate: float = 0.0
    """S4 and transformer backbones: the share of steps whose backbone input z_{t-1} is, in a second training pass,
    the prior's mode (what imagination feeds it) in place of the posterior's latent, with the reward and continuation
    losses read from that pass too ("loss_reward_prior", "loss_cont_prior"). 0: no second pass. Imagination feeds
    the backbone latents it never saw in training; on DistractingMemory one such input lost the cue on half the
    seeds. At 0.5 and 1 (docs/world_model.md) each such width-8 run kept the cue at one of them; neither kept it on
    every run"""
    dropout: float = 0.0
    """backbone dropout"""

    def __post_init__(self):
        require_at_least(self, 1, ("d_model", "n_layers", "d_state", "n_heads", "z_dim", "z_groups", "z_classes",
                                   "embed_dim", "hidden", "seq_len", "reward_heads"))
        require_at_least(self, 0, ("window", "kl_dyn", "kl_rep", "free_bits", "min_std", "reward_loss_scale"))
        require_in(self, 0.0, 1.0, ("unimix", "dropout"))
        require_in(self, 0.0, 1.0, ("prior_input_rate",), high_open=False)
        if self.prior_input_rate and self.backbone == "gru":
            raise ValueError("prior_input_rate is for the S4 and transformer backbones: the GRU's (RSSM's) posterior "
                             "reads h, so its pass is sequential and has no second pass with the prior's latents")
        if self.backbone == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.backbone == "s4" and self.d_state % 2:
            raise ValueError(f"d_state {self.d_state} must be even for the S4 backbone")

    @property
    def z_flat(self) -> int:
        """Z: width of one latent sample."""
        return self.z_dim if self.latent == "gaussian" else self.z_groups * self.z_classes


# ------------------------------------------------------------------------------------ latents and KL
def latent_kl(post: torch.Tensor, prior: torch.Tensor, cfg: WorldModelConfig) -> torch.Tensor:
    """KL[q || p] summed over the latent: post, prior (..., S) raw statistics -> (...)."""
    if cfg.latent == "gaussian":
        (mq, sq), (mp, sp) = _gauss(post, cfg), _gauss(prior, cfg)
        return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)
    lq, lp = _log_probs(post, cfg), _log_probs(prior, cfg)
    return (lq.exp() * (lq - lp)).sum((-2, -1))


def kl_terms(post: torch.Tensor, prior: torch.Tensor, mask: torch.Tensor,
             cfg: WorldModelConfig) -> dict[str, torch.Tensor]:
    """DreamerV3's balanced KL with free bits (module docstring); post, prior (B, K, S), mask (B, K) bool."""
    acc = torch.promote_types(post.dtype, torch.float32)  # bf16 under AMP: the KL in float32
    post, prior = post.to(acc), prior.to(acc)
    m = mask.to(acc)
    n = m.sum().clamp(min=1)
    dyn = latent_kl(post.detach(), prior, cfg).clamp(min=cfg.free_bits)  # (B, K) trains the prior
    rep = latent_kl(post, prior.detach(), cfg).clamp(min=cfg.free_bits)  # (B, K) trains the posterior
    kl = latent_kl(post.detach(), prior.detach(), cfg)
    return {"loss_kl_dyn": cfg.kl_dyn * (dyn * m).sum() / n, "loss_kl_rep": cfg.kl_rep * (rep * m).sum() / n,
            "kl": (kl * m).sum() / n}


def _gauss(stats: torch.Tensor, cfg: WorldModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    mean, raw = stats.chunk(2, -1)
    return mean, F.softplus(raw) + cfg.min_std


def _log_probs(stats: torch.Tensor, cfg: WorldModelConfig) -> torch.Tensor:
    """(..., G C) logits -> (..., G, C) log-probabilities with `unimix` of the uniform mixed in."""
    p = F.softmax(stats.unflatten(-1, (cfg.z_groups, cfg.z_classes)), -1)
    return torch.log((1 - cfg.unimix) * p + cfg.unimix / cfg.z_classes)


def sample_categorical(p: torch.Tensor) -> torch.Tensor:
    """One draw per row of probabilities p (..., C) -> indices (...): argmax of p / Exp(1) noise. The same draws as
    torch.multinomial(p, 1) (its own one-sample path) without its check that reads p back to the host, which a
    CUDA graph's capture forbids."""
    return (p / torch.empty_like(p).exponential_()).argmax(-1)


def latent_sample(stats: torch.Tensor, cfg: WorldModelConfig, sample: bool = True) -> torch.Tensor:
    """(..., S) statistics -> z (..., Z): a reparameterised sample (categorical: one-hot, straight-through
    gradients), or the mode (Gaussian mean, categorical argmax) when `sample` is False."""
    if cfg.latent == "gaussian":
        mean, std = _gauss(stats, cfg)
        return mean + std * torch.randn_like(std) if sample else mean
    logp = _log_probs(stats, cfg)  # (..., G, C)
    if sample:
        idx = sample_categorical(logp.exp())
    else:
        idx = logp.argmax(-1)
    onehot = F.one_hot(idx, cfg.z_classes).to(logp.dtype)
    probs = logp.exp()
    return (onehot + probs - probs.detach()).flatten(-2)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|) (DreamerV3): rewards of any scale as regression targets."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of symlog."""
    return torch.sign(x) * torch.expm1(x.abs())


# ------------------------------------------------------------------------------------------- networks
def mlp(d_in: int, hidden: int, d_out: int, layers: int = 1) -> nn.Sequential:
    """`layers` hidden layers of Linear, LayerNorm, SiLU (DreamerV3's blocks), then a Linear to d_out."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), LayerNorm(hidden), nn.SiLU()]
    return nn.Sequential(*mods, nn.Linear(hidden, d_out))


class ImageDecoder(nn.Module):
    """(..., F) -> (..., H, W, C) or (..., C, H, W) pixels in [0, 1] units (unbounded): Linear to an 8x-downsampled
    grid of 64 channels, then three stride-2 transposed convolutions (32, 16, C channels); H, W multiples of 8."""

    def __init__(self, d_in: int, shape: tuple[int, ...]):
        super().__init__()
        self.channels_last = shape[-1] <= shape[0]  # the tokenizer's rule
        self.h, self.w, self.c = shape if self.channels_last else (shape[1], shape[2], shape[0])
        self.shape = tuple(shape)
        self.fc = nn.Linear(d_in, 64 * (self.h // 8) * (self.w // 8))
        self.deconv = nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.SiLU(),
                                    nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.SiLU(),
                                    nn.ConvTranspose2d(16, self.c, 4, 2, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        lead = f.shape[:-1]
        x = self.fc(f).view(-1, 64, self.h // 8, self.w // 8)  # (N, 64, H/8, W/8)
        x = self.deconv(x) + 0.5  # (N, C, H, W), centred on mid-grey
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        return x.reshape(*lead, *self.shape)


class WorldModel(Agent):
    Config = WorldModelConfig

    def __init__(self, config: WorldModelConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        obs_space, act_space = spec.observation_space, spec.action_space
        self.image = is_image(obs_space)
        if not (self.image or (isinstance(obs_space, gym.spaces.Box) and obs_space.dtype.kind == "f")):
            raise DataError(f"world model: observation space {obs_space} is not supported; it decodes uint8 images "
                            f"(rank 3) and float Box vectors")
        if self.image:
            s = obs_space.shape
            h, w = (s[0], s[1]) if s[-1] <= s[0] else (s[1], s[2])
            if h % 8 or w % 8:
                raise DataError(f"world model: image observations {s} need height and width multiples of 8 "
                                f"(the decoder)")
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        if self.discrete:
            self.a_dim = int(act_space.n)
        else:
            low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise DataError(f"world model: action space {act_space} needs finite bounds")
            self.a_dim = int(np.prod(act_space.shape))
            self.register_buffer("act_center", torch.as_tensor((high + low) / 2, dtype=torch.float32).flatten())
            self.register_buffer("act_scale", torch.as_tensor((high - low) / 2, dtype=torch.float32).flatten())
        c = config
        self.encoder = TrajectoryTokenizer("s", obs_space, act_space, c.embed_dim, readout={},
                                           obs_mean=spec.obs_mean, obs_std=spec.obs_std)
        self.rssm = c.backbone == "gru"  # DreamerV3's posterior q(z | h, e): sequential
        n_stats = 2 * c.z_dim if c.latent == "gaussian" else c.z_groups * c.z_classes
        self.posterior = mlp(c.embed_dim + (c.d_model if self.rssm else 0), c.hidden, n_stats)
        self.prior = mlp(c.d_model, c.hidden, n_stats)
        self.inp = nn.Sequential(nn.Linear(c.z_flat + self.a_dim, c.d_model), LayerNorm(c.d_model), nn.SiLU())
        if c.backbone == "s4":
            self.backbone = S4Backbone(c.d_model, c.n_layers, d_state=c.d_state, kind=c.ssm_kind, dropout=c.dropout)
        elif c.backbone == "gru":
            self.backbone = GRU(c.d_model, c.n_layers)
        else:
            self.backbone = CausalTransformer(c.d_model, c.n_layers, c.n_heads, window=c.window or c.seq_len,
                                              dropout=c.dropout, activation="gelu")
        feat = c.d_model + c.z_flat
        if self.image:
            self.decoder = ImageDecoder(feat, obs_space.shape)
        else:
            self.decoder = mlp(feat, c.hidden, int(np.prod(obs_space.shape)))
        self.reward_head = mlp(feat + self.a_dim, c.hidden, 1)
        self.reward_ensemble = nn.ModuleList(mlp(feat + self.a_dim, c.hidden, 1) for _ in range(c.reward_heads - 1))
        self.cont_head = mlp(feat + self.a_dim, c.hidden, 1)
        # moving averages of (1, symlog r, symlog(r)^2) over training batches, from zeros: the first entry is the
        # average's bias correction (Adam's), 1 - decay^updates
        self.register_buffer("reward_moments", torch.zeros(3))

    @classmethod
    def check_preset(cls, preset: Any) -> None:
        super().check_preset(preset)
        if preset.trainer.eval_episodes:
            raise ValueError(f"agent {preset.agent!r} is a world model: it has no policy to evaluate; set "
                             f"trainer.eval_episodes = 0 (now {preset.trainer.eval_episodes})")

    # ------------------------------------------------------------------------------------ pieces
    @property
    def dtype(self) -> torch.dtype:
        return self.prior[0].weight.dtype

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., *obs_shape) raw -> (..., E). The tokenizer may stay float32 inside a float64 model (tests)."""
        return self.encoder.step("s", obs, None).to(self.dtype)

    def action_input(self, act: torch.Tensor) -> torch.Tensor:
        """(...) int or (..., A) env units -> (..., A): one-hot, or Box actions in [-1, 1] units."""
        if self.discrete:
            return F.one_hot(act.long(), self.a_dim).to(self.dtype)
        return (act.to(self.dtype) - self.act_center.to(self.dtype)) / self.act_scale.to(self.dtype)

    def obs_target(self, obs: torch.Tensor) -> torch.Tensor:
        """What the decoder reconstructs: pixels in [0, 1], or features normalised by the dataset's statistics."""
        if self.image:
            return obs.to(self.dtype) / 255.0
        mean = self.encoder.obs_mean.to(self.dtype)
        std = self.encoder.obs_std.to(self.dtype)
        return ((obs.to(self.dtype) - mean) / std).flatten(-len(self.spec.observation_space.shape))

    def from_target(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output -> observation units: pixels in [0, 255] (float, clamped), or raw features."""
        if self.image:
            return (x * 255.0).clamp(0.0, 255.0)
        shape = self.spec.observation_space.shape
        return (x * self.encoder.obs_std + self.encoder.obs_mean).unflatten(-1, shape)

    def inputs(self, prev_z: torch.Tensor, prev_a: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """x_t from (z_{t-1} (..., Z), a_{t-1} (..., A)), zeroed where start (...) bool: (..., d)."""
        keep = (~start).to(prev_z.dtype)[..., None]
        return self.inp(torch.cat([prev_z * keep, prev_a * keep], -1))

    def hidden(self, z: torch.Tensor, a: torch.Tensor, first: torch.Tensor,
               ends: tuple[int, ...] = ()) -> tuple[torch.Tensor, Any]:
        """h_t for every t in one backbone pass: z (B, K, Z) latents, a (B, K, A) action inputs, first (B, K) bool
        -> h (B, K, d) and the backbone state after step K-1. The sequence's first step starts fresh (no state,
        zero inputs), as an episode start does; the backbone resets where `first`. With `ends` (increasing step
        counts, the last K) the pass runs in parts and the state is a list: the state after each part."""
        start = first.clone()
        start[:, 0] = True
        x = self.inputs(F.pad(z[:, :-1], (0, 0, 1, 0)), F.pad(a[:, :-1], (0, 0, 1, 0)), start)  # (B, K, d)
        if not ends:
            return self.backbone(x, None, reset=start)
        hs, states, state, lo = [], [], None, 0
        for hi in ends:
            h, state = self.backbone(x[:, lo:hi], state, reset=start[:, lo:hi])
            hs.append(h), states.append(state)
            lo = hi
        return torch.cat(hs, 1), states

    def posterior_pass(self, obs: torch.Tensor, act: torch.Tensor, first: torch.Tensor,
                       sample: bool = True, ends: tuple[int, ...] = ()) -> dict[str, Any]:
        """Posterior pass over real steps: obs (B, K, *obs), act (B, K) or (B, K, A), first (B, K) -> h (B, K, d),
        z (B, K, Z), post and prior statistics (B, K, S), action inputs a (B, K, A), and the backbone state after
        step K-1 (what imagination continues from). With `ends` (increasing step counts, the last K), also
        "states": the backbone state after step e-1 for each e in ends (where an agent's imagination starts)."""
        c = self.config
        e = self.embed(obs)  # (B, K, E)
        a = self.action_input(act)  # (B, K, A)
        start = first.clone()
        start[:, 0] = True
        if ends and ends[-1] != start.shape[1]:
            raise ValueError(f"ends {ends} must finish at the sequence's length {start.shape[1]}")
        out = {}
        if not self.rssm:  # S4WM / TSSM: the posterior reads the observation only; everything in parallel
            post = self.posterior(e)
            z = latent_sample(post, c, sample)
            h, state = self.hidden(z, a, first, ends)
            if ends:
                out["states"], state = state, state[-1]
        else:  # RSSM: q(z_t | h_t, e_t), one step at a time
            B, K = start.shape
            state = self.backbone.initial_state(B, e.device, self.dtype)
            zt = e.new_zeros(B, c.z_flat)
            hs, zs, posts, states = [], [], [], []
            for t in range(K):
                state = self.backbone.reset(state, start[:, t])
                prev_a = a[:, t - 1] if t else torch.zeros_like(a[:, 0])
                ht, state = self.backbone.step(self.inputs(zt, prev_a, start[:, t]), state)
                pt = self.posterior(torch.cat([ht, e[:, t]], -1))
                zt = latent_sample(pt, c, sample)
                hs.append(ht), zs.append(zt), posts.append(pt)
                if t + 1 in ends:
                    states.append(state)
            h, z, post = torch.stack(hs, 1), torch.stack(zs, 1), torch.stack(posts, 1)
            if ends:
                out["states"] = states
        return out | {"h": h, "z": z, "post": post, "prior": self.prior(h), "a": a, "state": state}

    def dream_step(self, z: torch.Tensor, a: torch.Tensor, state: Any,
                   sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One imagined step: (z_{t-1} (N, Z), action input a_{t-1} (N, A), backbone state) -> h_t, z_t from the
        prior (a sample, or its mode), and the next state."""
        h, state = self.backbone.step(self.inputs(z, a, torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)),
                                      state)
        return h, latent_sample(self.prior(h), self.config, sample), state

    def heads(self, h: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(decoded observation in target units, rewards (R, ...) in symlog units, one row per reward head,
        continuation logit)."""
        return (self.decoder(torch.cat([h, z], -1)), *self.reward_cont(h, z, a))

    def reward_cont(self, h: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`heads` without the decoder: (rewards (R, ...) in symlog units, continuation logit)."""
        fa = torch.cat([h, z, a], -1)
        return self.rewards(fa), self.cont_head(fa)[..., 0]

    def rewards(self, fa: torch.Tensor) -> torch.Tensor:
        """Every reward head at (h, z, a) features (..., F + A): (R, ...) in symlog units."""
        return torch.stack([head(fa)[..., 0] for head in (self.reward_head, *self.reward_ensemble)])

    # ---------------------------------------------------------------------------------- training
    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        check_store(store, self.spec.observation_space, "the world model's")
        return sequences(store, batch_size, self.config.seq_len, generator)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return world_model_loss(self, batch)

    # ------------------------------------------------------------------------------------ acting
    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol()

    def initial_state(self, n_envs: int, device: torch.device | str, **condition: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is a world model: it has no policy to act with. Set "
                        f"trainer.eval_episodes = 0 (its presets do), and use seqrl.runners.imagine to evaluate it")

    def act(self, obs: Any, state: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is a world model: it has no policy to act with (see imagine())")

    def observe(self, state: Any, reward: Any, done: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is a world model: it has no policy to act with (see imagine())")


def check_store(store: ReplayStore, space: gym.Space, whose: str) -> None:
    """DataError when the store's observations are not those of `space` (image frames of another shape)."""
    if not same_space(store.observation_space, space):
        raise DataError(f"the dataset's observations {store.observation_space} differ from {whose} {space}"
                        + (f" (frames {tuple(store.observation_space.shape)} against {tuple(space.shape)})"
                           if hasattr(store.observation_space, "shape") and hasattr(space, "shape") else ""))


def world_model_loss(model: WorldModel, batch: Batch, out: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The ELBO terms of one batch of sequences (module docstring), masked, mean over real steps; `out`: the
    batch's `posterior_pass` when the caller has it already."""
    cfg = model.config
    out = model.posterior_pass(batch.obs, batch.act, batch.first) if out is None else out
    acc = torch.promote_types(model.dtype, torch.float32)  # bf16 under AMP: the losses in float32
    dec = model.decoder(torch.cat([out["h"], out["z"]], -1)).to(acc)
    m = batch.mask.to(dec.dtype)
    n = m.sum().clamp(min=1)
    target = model.obs_target(batch.obs).to(acc)
    se = (dec - target) ** 2
    se = se.flatten(2).sum(-1)  # (B, K) summed over pixels or features
    r_target = symlog(batch.rew.to(dec.dtype))
    c_target = (~batch.term).to(dec.dtype)
    weight = reward_weight(model, r_target, m)

    def reward_and_cont(h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward loss (mean over the reward heads, weighted) and the continuation loss at (h, z, a), masked
        means. The weight's part above 1 reaches the heads and h (the backbone and, through it, earlier latents) but
        not the current latent z: the reward heads read z with its value unchanged and its gradient scaled by
        1 / max(weight, 1)."""
        a = out["a"]
        z_r = z.detach() + (z - z.detach()) / weight.clamp(min=1)
        rew = model.rewards(torch.cat([h, z_r, a], -1)).to(acc)
        cont = model.cont_head(torch.cat([h, z, a], -1))[..., 0].to(acc)
        return (weight * (((rew - r_target) ** 2).mean(0) * m).sum() / n,
                (F.binary_cross_entropy_with_logits(cont, c_target, reduction="none") * m).sum() / n)

    terms = {"loss_recon": (se * m).sum() / n, "reward_weight": weight}
    terms["loss_reward"], terms["loss_cont"] = reward_and_cont(out["h"], out["z"])
    terms |= kl_terms(out["post"], out["prior"], batch.mask, cfg)
    if cfg.prior_input_rate:  # the backbone again, some inputs the prior's mode: what imagination feeds it
        prior_z = latent_sample(out["prior"].detach(), cfg, False)
        swap = torch.rand(out["z"].shape[:2], device=out["z"].device) < cfg.prior_input_rate
        h, _ = model.hidden(torch.where(swap[..., None], prior_z, out["z"]), out["a"], batch.first)
        terms |= dict(zip(PRIOR_INPUT_LOSSES, reward_and_cont(h, out["z"])))
    per = math.prod(target.shape[2:])
    terms["recon_mse"] = (terms["loss_recon"] / per).detach()  # per pixel (feature)
    # -ELBO of the observations under unit-variance Gaussians, up to constants
    terms["neg_elbo_obs"] = (terms["loss_recon"] / 2 + terms["kl"]).detach()
    return terms


def reward_weight(model: WorldModel, r_target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward loss's weight, 1 / (REWARD_UNIT^2 var(symlog r)) held in [1, reward_loss_scale]: a scalar tensor
    without gradient. r_target (B, K) symlog rewards, mask (B, K) real steps. In training mode with gradients on, the
    batch's masked moments first join the model's moving averages (`reward_moments`, decay REWARD_DECAY); the
    variance is read from those, or from the batch alone before any update. Constant rewards (variance 0) get the
    largest weight."""
    cap, update = model.config.reward_loss_scale, model.training and torch.is_grad_enabled()
    with torch.no_grad():
        r, w = r_target.float(), mask.float()
        n = w.sum().clamp(min=1)
        batch = torch.stack([torch.ones_like(n), (r * w).sum() / n, (r * r * w).sum() / n])
        mom = model.reward_moments
        if update:
            mom.mul_(REWARD_DECAY).add_(batch.to(mom.dtype), alpha=1 - REWARD_DECAY)
        mom = torch.where(mom[0] > 0, mom.float(), batch)
        mean, sq = mom[1] / mom[0], mom[2] / mom[0]
        return spread_weight(sq - mean * mean, cap)


def spread_weight(var: torch.Tensor, cap: float) -> torch.Tensor:
    """1 / (REWARD_UNIT^2 var) held in [1, cap] (at cap below 1: cap); var 0 gives cap."""
    return (1 / (REWARD_UNIT ** 2 * var.clamp(min=0))).clamp(min(1.0, cap), cap)


# ----------------------------------------------------------------------------------------- imagination
@torch.no_grad()
def imagine(model: WorldModel, obs: torch.Tensor, act: torch.Tensor, horizon: int,
            sample: bool = False) -> dict[str, torch.Tensor]:
    """Open-loop imagination. obs (B, C, *obs) real context steps (the first starts the episode's state), act
    (B, C + H) or (B, C + H, A) actions of every step, context and imagined. Reads the context through the
    posterior, then for t = C .. C+H-1 steps the backbone on (z_{t-1}, a_{t-1}) and takes z_t from the prior
    (its mode, or a sample).

    Returns obs (B, H, *obs) imagined observations in observation units (pixels 0..255 as floats), target
    (B, H, ...) the same in decoder units, reward (B, H) in the env's units (the mean over reward heads), cont
    (B, H) probabilities, recon (B, C, *obs) the context's reconstruction, h (B, C+H, d) and z (B, C+H, Z).
    ValueError for a horizon < 1 or actions that do not cover it; FloatingPointError naming the first imagined
    step whose decoded frame holds NaN or inf."""
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"imagination horizon must be an integer >= 1, got {horizon!r}")
    B, C = act.shape[0], obs.shape[1]
    if C < 1:
        raise ValueError("imagination needs a context of at least one real step")
    if act.shape[1] != C + horizon:
        raise ValueError(f"actions must cover context + horizon = {C} + {horizon} = {C + horizon} steps, "
                         f"got {act.shape[1]}")
    first = torch.zeros(B, C, dtype=torch.bool, device=act.device)
    first[:, 0] = True
    ctx = model.posterior_pass(obs, act[:, :C], first, sample=sample)
    a = model.action_input(act)  # (B, C+H, A)
    dec_c, _, _ = model.heads(ctx["h"], ctx["z"], a[:, :C])
    state, z = ctx["state"], ctx["z"][:, -1]
    hs, zs, decs, rews, conts = [], [], [], [], []
    for k in range(horizon):
        t = C + k
        h, z, state = model.dream_step(z, a[:, t - 1], state, sample)
        dec, rew, cont = model.heads(h, z, a[:, t])
        if not torch.isfinite(dec).all():
            raise FloatingPointError(f"imagination: the decoded frame of imagined step {k} (step {t} of the sequence, "
                                     f"context {C}) holds NaN or inf")
        hs.append(h), zs.append(z), decs.append(dec), rews.append(symexp(rew).mean(0)), conts.append(torch.sigmoid(cont))
    target = torch.stack(decs, 1)
    return {"obs": model.from_target(target), "target": target, "reward": torch.stack(rews, 1),
            "cont": torch.stack(conts, 1), "recon": model.from_target(dec_c),
            "h": torch.cat([ctx["h"], torch.stack(hs, 1)], 1), "z": torch.cat([ctx["z"], torch.stack(zs, 1)], 1)}
