"""An agent that acts from its imagination: DreamerV3's actor-critic (Hafner et al. 2023, "Mastering Diverse
Domains through World Models", arXiv:2301.04104) on the latent world model of seqrl/policies/world_model.py,
whose backbone is a preset choice: S4 blocks (R2I's change: Samsami et al. 2024, "Mastering Memory Tasks with
World Models", arXiv:2403.04253; agents/s4wm_agent.toml), the GRU (DreamerV3's RSSM; agents/dreamer.toml) or
a causal transformer. `--set policy.world_model.backbone=gru` turns one into the other.

Dimension letters: B sequences per update, K steps per sequence, C imagination starts per sequence
(`starts`), N = C B starts, H imagined steps (`horizon`), F = d + Z the feature (h, z), A action width.

One update (`losses`) on B sequences of real steps:

1. World model: the ELBO of world_model.py on the sequences, its posterior pass run in C parts so that the
   backbone's state after each part is kept: N starting states, each with the real context before it.
2. Imagination from those N states (without gradient for discrete actions): the actor samples a_k ~ pi(. | f_k)
   from the feature
   f_k = (h_k, z_k); the world model gives r_k and the continuation c_k from (f_k, a_k), steps its backbone on
   (z_k, a_k) and draws z_{k+1} from its prior. H steps, H + 1 features.
3. Returns: lambda-returns bootstrapped with the slow critic v',
       R_H = v'(f_H),   R_k = r_k + gamma c_k ((1 - lambda) v'(f_{k+1}) + lambda R_{k+1}),
   and step weights w_k = prod_{j<k} c_j (an imagined episode that has ended counts no more).
4. Critic (DreamerV3's, with squared error in symlog space in place of its two-hot bins): regress
   symlog(R_k) from f_k, plus the same regression towards the slow critic's output (weight `slow_reg`).
   The slow critic is an exponential moving average of the critic (fraction `slow_rate` per update).
5. Actor, as DreamerV3: for discrete actions REINFORCE with return normalisation,
       loss = -mean_k w_k [ sg((R_k - v(f_k)) / max(1, S)) log pi(a_k | f_k) + eta H[pi(. | f_k)] ];
   for Box actions the imagination keeps its graph (reparameterised action samples) and the actor maximises
   R_k / max(1, S) by backpropagating through the world model's dynamics, rewards and the slow critic (the
   trainer steps only the actor's parameters on it; the world model's come from its own loss), or, with
   `box_gradient = "reinforce"`, by REINFORCE as for discrete actions (DreamerV3's current code does so for every
   action space: no gradient through a model the actor could exploit);
   S an exponential moving average (decay `return_decay`) of the 95th minus the 5th percentile of the
   returns. Discrete actions mix `unimix` of the uniform into the actor's probabilities; Box actions are a
   Gaussian with mean tanh(.) and std in [min_std, max_std], sampled then clipped to [-1, 1].
6. Offline (source.kind = "dataset"), `bc_weight` > 0 adds a behaviour-cloning term on the batch's own
   actions at their posterior features: -bc_weight mean log pi(a_t | f_t). An actor kept near the data's
   actions cannot exploit the world model where the data never went (TD3+BC's idea, Fujimoto & Gu 2021);
   it is one line, and cheaper than an ensemble of reward heads.
   The other conservatism, `reward_penalty` > 0 with `world_model.reward_heads` = R >= 2: imagined rewards are
   the R heads' mean less `reward_penalty` standard deviations of their predictions (a lower confidence bound,
   as MOPO's penalty, Yu et al. 2020, with the spread of reward heads in place of a dynamics ensemble's). The
   heads agree where the data went and part where it did not, so imagination away from the data pays less.
   agents/s4wm_agent_offline.toml uses this one (docs/results.md compares the two).

The three optimiser groups (world model, actor, critic) step on their own loss terms.

Online (source.kind = "env"): the env source puts every collection's steps into its ReplayStore (unfinished
episodes as pieces), one stream per env, and, once `source.learning_starts` steps are stored, replays it
(`replay = True`): `source.train_ratio` replayed steps per env step, in batches of `source.batch_size` sequences
drawn with `sample` (stream-ordered sequences across episode ends, with is_first flags).

Acting (`act`, `explore`): the posterior of the current observation, the backbone stepped on the previous
(z, a), the actor on (h, z): the mode (evaluation) or a sample (exploration). One backbone step per env step:
O(1) for S4 and the GRU.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, Distribution, Normal

from seqrl.data.store import Batch, ReplayStore
from seqrl.errors import DataError
from seqrl.nn import map_state, stack_states
from seqrl.policies.base import Agent, OptimizerGroup, TaskSpec, log_prob_entropy
from seqrl.policies.world_model import (PRIOR_INPUT_LOSSES, WorldModel, WorldModelConfig, latent_sample, mlp,
                                        sample_categorical, symexp, symlog, world_model_loss)
from seqrl.presets import require_at_least, require_in

WORLD_MODEL_LOSSES = ("loss_recon", "loss_reward", "loss_cont", "loss_kl_dyn", "loss_kl_rep")


@dataclass(frozen=True)
class DreamerConfig:
    """Defaults: DreamerV3's actor-critic settings (its hyperparameter table), at a small width."""

    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    """the latent world model (seqrl/policies/world_model.py); its backbone is the S4 / GRU / transformer choice"""
    horizon: int = 15
    """H: imagined steps per start (DreamerV3: 15)"""
    starts: int = 16
    """C: imagination starts per sequence, at the ends of C equal parts of it (DreamerV3 starts from every step; 4
    lost Pendulum on every seed measured, docs/results.md)"""
    gamma: float = 0.997
    """discount (DreamerV3: 1 - 1/333)"""
    lam: float = 0.95
    """lambda of the lambda-returns (DreamerV3: 0.95)"""
    entropy: float = 3e-4
    """eta: the actor's entropy bonus (DreamerV3: 3e-4)"""
    unimix: float = 0.01
    """discrete actor: share of the uniform mixed into its probabilities (DreamerV3: 1%)"""
    min_std: float = 0.1
    """Box actor: the Gaussian's least std, in [-1, 1] action units (DreamerV3: 0.1)"""
    max_std: float = 1.0
    """Box actor: the Gaussian's largest std (DreamerV3: 1)"""
    box_gradient: Literal["dynamics", "reinforce"] = "dynamics"
    """Box actor's gradient: backpropagated through the imagined dynamics (Dreamer V1-V2; the first DreamerV3
    release for continuous control), or REINFORCE with normalised advantages as for discrete actions (DreamerV3's
    current code, for every action space)"""
    return_decay: float = 0.99
    """decay of the moving average of the returns' 5-95 percentile range (DreamerV3: 0.99)"""
    slow_rate: float = 0.02
    """fraction of the critic mixed into the slow critic after each update (DreamerV3: 0.02)"""
    slow_reg: float = 1.0
    """weight of the critic's regression towards the slow critic (DreamerV3: 1)"""
    hidden: int = 256
    """actor and critic MLP width (two hidden layers, LayerNorm, SiLU)"""
    actor_lr_scale: float = 0.3
    """the actor's learning rate is trainer.lr times this (DreamerV3: 3e-5 against 1e-4 for the model)"""
    critic_lr_scale: float = 0.3
    """the critic's learning rate is trainer.lr times this"""
    bc_weight: float = 0.0
    """offline conservatism: weight of the actor's log-likelihood of the batch's own actions (0: none)"""
    reward_penalty: float = 0.0
    """offline conservatism: imagined rewards are the reward heads' mean minus this many of their standard
    deviations (needs world_model.reward_heads >= 2; 0: the mean)"""

    def __post_init__(self):
        require_at_least(self, 1, ("horizon", "starts", "hidden"))
        require_at_least(self, 0, ("entropy", "slow_reg", "bc_weight", "reward_penalty", "actor_lr_scale",
                                   "critic_lr_scale"))
        require_in(self, 0.0, 1.0, ("gamma", "lam", "unimix", "return_decay", "slow_rate"))
        if not 0 < self.min_std <= self.max_std:
            raise ValueError(f"min_std {self.min_std} and max_std {self.max_std} need 0 < min_std <= max_std")
        if self.reward_penalty and self.world_model.reward_heads < 2:
            raise ValueError(f"reward_penalty {self.reward_penalty} needs an ensemble: set world_model.reward_heads "
                             f">= 2 (now {self.world_model.reward_heads})")
        if self.starts > self.world_model.seq_len:
            raise ValueError(f"starts {self.starts} exceeds world_model.seq_len {self.world_model.seq_len}: "
                             f"each start needs at least one real step")


def lambda_returns(rew: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, gamma: float,
                   lam: float) -> torch.Tensor:
    """rew, cont (H, N); value (H+1, N) -> R (H, N): R_k = r_k + gamma c_k ((1 - lam) v_{k+1} + lam R_{k+1}),
    R_H = v_H."""
    out, nxt = [], value[-1]
    for k in range(rew.shape[0] - 1, -1, -1):
        nxt = rew[k] + gamma * cont[k] * ((1 - lam) * value[k + 1] + lam * nxt)
        out.append(nxt)
    return torch.stack(out[::-1])


def percentiles(x: torch.Tensor, ps: tuple[float, ...]) -> list[torch.Tensor]:
    """The p-quantiles of all of x for each p of ps, from one sort, interpolated linearly between order statistics
    (torch.quantile's default), with Python-side positions: no host synchronisation (torch.quantile checks its q
    on the device)."""
    v = x.flatten().float().sort().values
    out = []
    for p in ps:
        pos = p * (v.numel() - 1)
        lo = int(pos)
        hi = min(lo + 1, v.numel() - 1)
        out.append(v[lo] + (pos - lo) * (v[hi] - v[lo]))
    return out


@dataclass
class DreamerState:
    """Acting state of n envs: the backbone's state, and the (h, z, a) of the previous step (n, d), (n, Z), (n, A)."""

    backbone: Any
    h: torch.Tensor
    z: torch.Tensor
    a: torch.Tensor
    start: torch.Tensor  # (n,) bool: the next step starts an episode


class Dreamer(Agent):
    Config = DreamerConfig
    sources = ("env", "dataset")
    replay = True  # online, the env source replays its store through `sample`

    def __init__(self, config: DreamerConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        act_space = spec.action_space
        if not isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise DataError(f"dreamer: the actor takes Discrete or Box actions, not {act_space}")
        self.wm = WorldModel(config.world_model, spec)  # DataError for observations it cannot decode
        self.discrete = self.wm.discrete
        self._dynamics_gradient = not self.discrete and config.box_gradient == "dynamics"
        A = self.wm.a_dim
        feat = config.world_model.d_model + config.world_model.z_flat
        self.actor = mlp(feat, config.hidden, A if self.discrete else 2 * A, layers=2)
        self.critic = mlp(feat, config.hidden, 1, layers=2)
        # zero output layers: the critic's as DreamerV3's; the actor's (our choice) so it starts uniform / centred
        for head in (self.actor[-1], self.critic[-1]):
            nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_scale", torch.zeros(()))  # S: the moving 5-95 percentile range
        self.register_buffer("return_seen", torch.zeros((), dtype=torch.bool))  # S has a first value
        self._store_checked: int | None = None  # the dataset whose rewards were checked

    @classmethod
    def check_preset(cls, preset: Any) -> None:
        super().check_preset(preset)
        if preset.source.kind == "env" and preset.source.train_ratio <= 0:
            raise ValueError("source.train_ratio must be > 0 for a replaying agent: it sets how many updates each "
                             "collection makes")

    def optimizer_groups(self) -> list[OptimizerGroup]:
        c = self.config
        wm_losses = WORLD_MODEL_LOSSES + (PRIOR_INPUT_LOSSES if self.wm.config.prior_input_rate else ())
        return [OptimizerGroup("world_model", list(self.wm.parameters()), wm_losses),
                OptimizerGroup("actor", list(self.actor.parameters()), ("loss_actor",), c.actor_lr_scale),
                OptimizerGroup("critic", list(self.critic.parameters()), ("loss_critic",), c.critic_lr_scale)]

    # ------------------------------------------------------------------------------------- actor
    def policy(self, f: torch.Tensor) -> Distribution:
        """The actor's distribution at features f (..., F); Box actions in [-1, 1] units. Without argument
        validation: its checks read values back to the host, which a CUDA graph's capture forbids."""
        return self._distribution(self.actor(f))

    def _distribution(self, out: torch.Tensor) -> Distribution:
        c = self.config
        if self.discrete:
            probs = (1 - c.unimix) * F.softmax(out, -1) + c.unimix / out.shape[-1]
            return Categorical(probs=probs, validate_args=False)
        mean, raw = out.chunk(2, -1)
        std = (c.max_std - c.min_std) * torch.sigmoid(raw + 2.0) + c.min_std
        return Normal(torch.tanh(mean), std, validate_args=False)

    def _mode(self, dist: Distribution) -> torch.Tensor:
        return dist.probs.argmax(-1) if self.discrete else dist.mean

    def _sample(self, dist: Distribution) -> torch.Tensor:
        """A draw of the actor: Categorical.sample's draws without its host sync (`sample_categorical`); Box
        actions reparameterised while gradients flow."""
        if self.discrete:
            return sample_categorical(dist.probs)
        return dist.rsample() if torch.is_grad_enabled() else dist.sample()

    def _action_input(self, a: torch.Tensor) -> torch.Tensor:
        """Actor sample (..., ) int or (..., A) in [-1, 1] units -> the world model's action input (..., A)."""
        return F.one_hot(a.long(), self.wm.a_dim).to(self.wm.dtype) if self.discrete else a.clamp(-1.0, 1.0)

    def _to_env(self, a: torch.Tensor) -> torch.Tensor:
        return a if self.discrete else a.clamp(-1.0, 1.0) * self.wm.act_scale + self.wm.act_center

    # ---------------------------------------------------------------------------------- training
    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        if not store.meta.get("online") and id(store) != self._store_checked:  # a dataset, once
            if not np.any(store.column("rew")):
                raise DataError(f"dreamer: every reward of the dataset {store.meta.get('dataset_id', '')!r} is 0 "
                                f"({len(store)} steps): the reward head and the actor-critic would have nothing to "
                                f"learn; this agent needs a dataset with rewards")
            self._store_checked = id(store)
        return self.wm.sample(store, batch_size, generator)

    def _ends(self, K: int) -> tuple[int, ...]:
        C = self.config.starts
        return tuple(K * (i + 1) // C for i in range(C))

    def dream(self, state: Any, h: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Imagine H steps from N states: backbone state, h (N, d), z (N, Z) -> features (H+1, N, F), actions
        (H, N[, A]) as sampled, rewards (H, N) in env units (the reward heads' mean, less `reward_penalty` times their
        spread), continuation probabilities (H, N) and, with several reward heads, their spread (H, N). Discrete
        actions, and Box ones at box_gradient "reinforce": no gradient. Box actions at "dynamics": reparameterised
        samples, and the graph kept through the world model (the actor's gradient backpropagates through the
        dynamics; the trainer steps only the actor on it)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._dynamics_gradient):
            return self._dream(state, h, z)

    def _dream(self, state: Any, h: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        wm, H, lam = self.wm, self.config.horizon, self.config.reward_penalty
        feats, acts, rews, spreads, conts = [], [], [], [], []
        for _ in range(H):
            f = torch.cat([h, z], -1)
            a = self._sample(self.policy(f))
            a_in = self._action_input(a)
            fa = torch.cat([f, a_in], -1)
            r = symexp(wm.rewards(fa))  # (R, N) env units, one row per reward head
            if len(r) > 1:
                spreads.append(r.std(0, unbiased=False))
            rews.append(r.mean(0) - lam * spreads[-1] if lam else r.mean(0))
            conts.append(torch.sigmoid(wm.cont_head(fa)[..., 0]))
            feats.append(f), acts.append(a)
            h, z, state = wm.dream_step(z, a_in, state)
        feats.append(torch.cat([h, z], -1))
        out = {"feat": torch.stack(feats), "act": torch.stack(acts), "rew": torch.stack(rews),
               "cont": torch.stack(conts)}
        return out | ({"spread": torch.stack(spreads)} if spreads else {})

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        K = batch.mask.shape[1]
        ends = self._ends(K)
        out = self.wm.posterior_pass(batch.obs, batch.act, batch.first, ends=ends)
        terms = world_model_loss(self.wm, batch, out)

        # imagination from the state after each part of every sequence: row i*B + b is part i of sequence b
        h0 = torch.stack([out["h"][:, e - 1] for e in ends]).flatten(0, 1).detach()  # (N, d); no host-to-device index
        z0 = torch.stack([out["z"][:, e - 1] for e in ends]).flatten(0, 1).detach()  # (N, Z)
        state0 = map_state(torch.Tensor.detach, stack_states(out["states"]))
        im = self.dream(state0, h0, z0)
        feat_g = im["feat"].to(torch.promote_types(im["feat"].dtype, torch.float32))  # (H+1, N, F); Box: with graph
        slow_g = self.slow_critic(feat_g)[..., 0]  # (H+1, N) symlog units
        ret_g = lambda_returns(im["rew"].to(feat_g.dtype), im["cont"].to(feat_g.dtype), symexp(slow_g), c.gamma, c.lam)
        feat, slow, ret = feat_g.detach(), slow_g.detach(), ret_g.detach()
        with torch.no_grad():
            weight = torch.cumprod(torch.cat([torch.ones_like(im["cont"][:1]), im["cont"][:-1]]), 0).to(feat.dtype)
            n = weight.sum().clamp(min=1e-8)  # (H, N) weights; every start is a real step (`sequences`)
            self._update_return_scale(ret)

        # critic: symlog regression on the returns and on the slow critic
        pred = self.critic(feat[:-1])[..., 0]  # (H, N)
        se = (pred - symlog(ret)) ** 2 + c.slow_reg * (pred - slow[:-1]) ** 2
        terms["loss_critic"] = 0.5 * (se * weight).sum() / n

        # actor: the normalised return itself differentiated through the imagined dynamics (Box, box_gradient
        # "dynamics"), or REINFORCE with normalised advantages (Discrete, and Box at "reinforce"); an entropy bonus
        out_a = self.actor(feat[:-1])
        logp, ent = log_prob_entropy(self._distribution(out_a), im["act"].detach(), self.discrete)
        scale = self.return_scale.clamp(min=1.0)
        if self._dynamics_gradient:
            objective = ret_g / scale
        else:
            objective = (ret - symexp(pred.detach())) / scale * logp
        if self.discrete:
            log_s = F.log_softmax(out_a.detach().to(feat.dtype), -1)  # the actor's own softmax, before unimix
            log_floor = math.log(c.unimix / out_a.shape[-1]) if c.unimix else -math.inf
            # share of imagined steps where some action's softmax is under unimix's share: there the
            # log-probabilities' gradient has all but gone (the mean entropy can hide this)
            low = log_s.amin(-1) < log_floor
            terms["actor_saturated"] = (low.to(feat.dtype) * weight).sum() / n
        terms["loss_actor"] = -((objective + c.entropy * ent) * weight).sum() / n
        if c.bc_weight:
            real = torch.cat([out["h"], out["z"]], -1).detach().to(feat.dtype)  # (B, K, F)
            act = batch.act if self.discrete else self.wm.action_input(batch.act).clamp(-1.0, 1.0)
            bc_logp, _ = log_prob_entropy(self.policy(real), act, self.discrete)
            m = batch.mask.to(feat.dtype)
            terms["bc_nll"] = -(bc_logp * m).sum() / m.sum().clamp(min=1)
            terms["loss_actor"] = terms["loss_actor"] + c.bc_weight * terms["bc_nll"]
            terms["bc_nll"] = terms["bc_nll"].detach()
        terms |= {"imagined_return": ret[0].mean(), "actor_entropy":
                  (ent.detach() * weight).sum() / n, "return_scale": self.return_scale.clone(),
                  "imagined_reward": (im["rew"] * weight).sum() / n}
        if self.wm.reward_ensemble:
            terms["reward_spread"] = (im["spread"].detach() * weight).sum() / n
        return terms

    def _update_return_scale(self, ret: torch.Tensor) -> None:
        """S <- decay S + (1 - decay) (P95 - P5) of the imagined returns (the first value as is). No host sync."""
        p5, p95 = percentiles(ret, (0.05, 0.95))
        spread = (p95 - p5).to(self.return_scale.dtype)
        d = self.config.return_decay
        self.return_scale.copy_(torch.where(self.return_seen, d * self.return_scale + (1 - d) * spread, spread))
        self.return_seen.fill_(True)

    def after_update(self) -> None:
        with torch.no_grad():  # one multi-tensor kernel, not one a parameter
            torch._foreach_lerp_(list(self.slow_critic.parameters()), list(self.critic.parameters()),
                                 self.config.slow_rate)

    # ------------------------------------------------------------------------------------ acting
    def initial_state(self, n_envs: int, device: torch.device | str) -> DreamerState:
        wm = self.wm
        dt = wm.dtype
        return DreamerState(wm.backbone.initial_state(n_envs, device, dt),
                            torch.zeros(n_envs, wm.config.d_model, device=device, dtype=dt),
                            torch.zeros(n_envs, wm.config.z_flat, device=device, dtype=dt),
                            torch.zeros(n_envs, wm.a_dim, device=device, dtype=dt),
                            torch.ones(n_envs, dtype=torch.bool, device=device))

    def _step(self, obs: torch.Tensor, state: DreamerState, sample: bool) -> tuple[torch.Tensor, DreamerState]:
        """One env step: the backbone on the previous (z, a), the posterior of obs, the actor's sample or mode."""
        wm = self.wm
        h, bstate = wm.backbone.step(wm.inputs(state.z, state.a, state.start), state.backbone)
        e = wm.embed(obs)
        z = latent_sample(wm.posterior(torch.cat([h, e], -1) if wm.rssm else e), wm.config, sample)
        dist = self.policy(torch.cat([h, z], -1))
        a = self._sample(dist) if sample else self._mode(dist)
        return a, DreamerState(bstate, h, z, self._action_input(a).to(z.dtype), torch.zeros_like(state.start))

    @torch.no_grad()
    def explore(self, obs: torch.Tensor, state: DreamerState) -> tuple[torch.Tensor, torch.Tensor, dict, DreamerState]:
        a, state = self._step(obs, state, sample=True)
        return a, self._to_env(a), {}, state

    def bootstrap(self, obs: torch.Tensor, state: DreamerState) -> dict[str, torch.Tensor]:
        return {}  # replayed, not bootstrapped from the rollout

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: DreamerState) -> tuple[torch.Tensor, DreamerState]:
        """The posterior's mode and the actor's mode (most likely action, or the Gaussian's mean)."""
        a, state = self._step(obs, state, sample=False)
        return self._to_env(a), state

    def observe(self, state: DreamerState, reward: torch.Tensor, done: torch.Tensor) -> DreamerState:
        """Clear the memory of the envs whose episode ended; their next step starts fresh (zero inputs)."""
        return dataclasses.replace(state, backbone=self.wm.backbone.reset(state.backbone, done), start=done.clone())

