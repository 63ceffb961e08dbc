"""Recurrent PPO: an actor-critic with a sequence-model memory (GTrXL, LSTM or Mamba), trained online.

Dimension letters: n envs, T steps per env per collection, L steps per sequence (`seq_len`),
S = T / L * n sequences per collection, d model width, A action dim.

Network, like every seqrl agent: the shared TrajectoryTokenizer embeds the observation as one "s" token
per env step (without LayerNorm, then a ReLU: CleanRL's Linear + ReLU encoder), a memory backbone
(seqrl/nn/: the backbone contract of `forward(x, state, reset)`, `step`, `initial_state`, `reset`) reads
it, and two heads give the action distribution (the shared ActionHead: categorical logits, or a diagonal
Gaussian with a state-independent log-std for Box actions, CleanRL's continuous PPO) and the value. With
`separate_critic` the value head reads a second embedding and memory of its own (sb3-contrib's
RecurrentPPO does this by default); the agent's state is then the pair (actor memory, critic memory).

Training (CleanRL's recurrent PPO, Huang et al. 2022, with the memory kept in the backbone's state):

1. The Trainer's env source steps n envs for T steps with `explore` (and asks `bootstrap` for the value
   of observations not acted on); the memory is carried from step to
   step and across collections, cleared per env at episode ends (`observe`), and recorded before every
   L-th step (`segment`): the memory each sequence starts from.
2. `rollout_batches`: truncated episodes (time limits) are bootstrapped with the value of their final
   observation; GAE(lambda) advantages and returns (`gae`); then `epochs` passes of `minibatches`
   minibatches of whole sequences, each one optimiser update. An epoch loop stops early when the mean
   approximate KL of an epoch passes `target_kl`.
3. `losses`: each sequence re-run from its recorded memory (truncated BPTT: gradients flow inside a
   sequence, not into the memory), and `ppo_loss`: clipped surrogate, clipped value loss, entropy
   bonus, advantages normalised per minibatch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.nn as nn

from seqrl.data.store import tree_map
from seqrl.nn import index_state, stack_states
from seqrl.nn.gtrxl import GTrXL
from seqrl.nn.rnn import LSTM
from seqrl.nn.mamba import MambaBackbone
from seqrl.policies.base import ActionHead, Agent, TaskSpec
from seqrl.presets import require_at_least
from seqrl.tokenizer import TrajectoryTokenizer


# ------------------------------------------------------------------------------------ PPO math
def gae(rew: torch.Tensor, value: torch.Tensor, done: torch.Tensor, last_value: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    rew, value (T, n); done (T, n) bool: the episode ended at that step (nothing is bootstrapped across
    it; fold a truncated episode's bootstrap into its last reward); last_value (n,): the value of the
    observation after the rollout. Returns advantages and returns (advantages + values), (T, n)."""
    adv = torch.zeros_like(rew)
    running = torch.zeros_like(last_value)
    for t in range(rew.shape[0] - 1, -1, -1):
        next_value = last_value if t == rew.shape[0] - 1 else value[t + 1]
        live = (~done[t]).to(rew.dtype)
        delta = rew[t] + gamma * next_value * live - value[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + value


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, value: torch.Tensor,
             old_value: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor, clip_coef: float,
             vf_clip: float, ent_coef: float, vf_coef: float, norm_adv: bool = True) -> dict[str, torch.Tensor]:
    """PPO's clipped objective (Schulman et al. 2017, arXiv:1707.06347) on tensors of one shape.

    Returns the `loss_*` terms the trainer sums (policy, weighted value, weighted negative entropy)
    and diagnostics: the unweighted value loss, entropy, approximate KL ((r - 1) - log r, Schulman's
    low-variance estimator), the fraction of clipped ratios and the explained variance of the
    collection-time values."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    loss_pi = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if vf_clip > 0:  # the new value may move at most vf_clip from the collection-time value, or pay the larger error
        clipped = old_value + (value - old_value).clamp(-vf_clip, vf_clip)
        v_loss = 0.5 * torch.max((value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((value - returns) ** 2).mean()
    ent = entropy.mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip_coef).float().mean()
        var = returns.var()
        explained = torch.where(var > 0, 1 - (returns - old_value).var() / var, torch.full_like(var, float("nan")))
    return {"loss_policy": loss_pi, "loss_value": vf_coef * v_loss, "loss_entropy": -ent_coef * ent,
            "value_loss": v_loss.detach(), "entropy": ent.detach(), "approx_kl": approx_kl,
            "clip_fraction": clip_fraction, "explained_variance": explained}


# ---------------------------------------------------------------------------- policy states
def sequences(x: torch.Tensor, L: int) -> torch.Tensor:
    """(T, n, ...) -> (C*n, L, ...), sequence c*n + e = steps c*L .. c*L+L-1 of env e."""
    T, n = x.shape[:2]
    return x.view(T // L, L, n, *x.shape[2:]).transpose(1, 2).reshape(T // L * n, L, *x.shape[2:])


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GTrXLConfig:
    """Gated Transformer-XL memory (Parisotto et al. 2019; seqrl/nn/gtrxl.py). The paper used 12 layers of
    width 256 and memory 512 on DMLab-30."""

    n_layers: int = 2
    """GTrXL blocks"""
    n_heads: int = 4
    """attention heads"""
    d_ff: int = 256
    """hidden width of each block's MLP"""
    memory: int = 64
    """M: steps of memory each layer caches; a step attends to itself and the M steps before it"""
    gate_bias: float = 2.0
    """b_g, the update-gate bias that starts every block near the identity (the paper's 2)"""

    def __post_init__(self):
        require_at_least(self, 1, ("n_layers", "n_heads", "d_ff", "memory"))


@dataclass(frozen=True)
class LSTMConfig:
    """LSTM memory (CleanRL's `ppo_atari_lstm` layout: embedding, LSTM, heads)."""

    n_layers: int = 1
    """stacked LSTM layers"""

    def __post_init__(self):
        require_at_least(self, 1, ("n_layers",))


@dataclass(frozen=True)
class MambaConfig:
    """Mamba memory (seqrl/nn/mamba.py): O(1) per step, however long the episode."""

    n_layers: int = 2
    """Mamba blocks"""
    d_state: int = 16
    """N: SSM state size per channel"""
    d_conv: int = 4
    """kernel of the causal depthwise conv"""
    expand: int = 2
    """inner width E = expand * d"""

    def __post_init__(self):
        require_at_least(self, 1, ("n_layers", "d_state", "d_conv", "expand"))


@dataclass(frozen=True)
class PPOConfig:
    """Defaults follow CleanRL's PPO (Huang et al. 2022, "The 37 implementation details of PPO")."""

    # network
    backbone: Literal["gtrxl", "lstm", "mamba"] = "gtrxl"
    """the memory; its settings are the table of the same name"""
    d_model: int = 64
    """model width d (the observation embedding too)"""
    gtrxl: GTrXLConfig = dataclasses.field(default_factory=GTrXLConfig)
    lstm: LSTMConfig = dataclasses.field(default_factory=LSTMConfig)
    mamba: MambaConfig = dataclasses.field(default_factory=MambaConfig)
    init_log_std: float = 0.0
    """Box actions: initial log standard deviation of the Gaussian policy (in [-1, 1] action units)"""
    # PPO
    seq_len: int = 32
    """truncated BPTT: collections are cut into sequences of this many steps, each replayed from the memory
    recorded when it was collected; must divide source.n_steps"""
    epochs: int = 4
    """passes over each collection"""
    minibatches: int = 4
    """minibatches per pass, each of whole sequences: must divide source.n_envs * source.n_steps / seq_len"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE(lambda) (Schulman et al. 2016)"""
    clip_coef: float = 0.2
    """PPO ratio clipping epsilon"""
    vf_clip: float = 0.2
    """value clipping around the collection-time value; 0 disables"""
    ent_coef: float = 0.01
    """entropy bonus"""
    vf_coef: float = 0.5
    """value loss weight"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    target_kl: float = 0.0
    """stop a collection's epochs early when an epoch's mean approximate KL exceeds this; 0 disables"""
    separate_critic: bool = False
    """the critic reads the observations through an embedding and memory of its own (sb3-contrib's
    RecurrentPPO default), so the value loss does not shape the actor's memory; False: one memory for both
    (CleanRL)"""

    def __post_init__(self):
        require_at_least(self, 1, ("d_model", "seq_len", "epochs", "minibatches"))
        if self.backbone == "gtrxl" and (self.d_model % self.gtrxl.n_heads or self.d_model % 2):
            raise ValueError(f"d_model {self.d_model} must be even and divisible by gtrxl.n_heads {self.gtrxl.n_heads}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1 or not self.clip_coef > 0:
            raise ValueError("clip_coef must be > 0, gamma and gae_lambda in [0, 1]")
        if min(self.vf_clip, self.ent_coef, self.vf_coef, self.target_kl) < 0:
            raise ValueError("vf_clip, ent_coef, vf_coef and target_kl must be >= 0")


def make_backbone(cfg: PPOConfig) -> nn.Module:
    d = cfg.d_model
    if cfg.backbone == "gtrxl":
        g = cfg.gtrxl
        return GTrXL(d, g.n_layers, g.n_heads, g.memory, g.d_ff, g.gate_bias)
    if cfg.backbone == "lstm":
        return LSTM(d, cfg.lstm.n_layers)
    m = cfg.mamba
    return MambaBackbone(d, m.n_layers, m.d_state, m.d_conv, m.expand)


@dataclass
class PPOBatch:
    """A minibatch of S sequences of L steps, with what collection recorded."""

    obs: Any  # (S, L, *obs_shape), or {leaf: (S, L, *leaf_shape)} for a Dict/Tuple space
    act: torch.Tensor  # (S, L[, A])
    first: torch.Tensor  # (S, L) bool: an episode starts at this step
    state: Any  # the memory before each sequence, S rows
    logp: torch.Tensor  # (S, L) log-probability at collection
    value: torch.Tensor  # (S, L) value at collection
    adv: torch.Tensor  # (S, L) GAE advantage
    ret: torch.Tensor  # (S, L) return target


def _init_linear(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with a gain, zero bias (CleanRL's PPO: 0.01 on the policy head, 1 on the value)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _encoder(spec: TaskSpec, d: int) -> TrajectoryTokenizer:
    """The observation's token, to be followed by a ReLU: CleanRL's encoder (Linear + ReLU, orthogonal init with
    gain sqrt 2), here the shared tokenizer's embedding without its LayerNorm."""
    tokenizer = TrajectoryTokenizer("s", spec.observation_space, spec.action_space, d, readout={"memory": "s"},
                                    obs_mean=spec.obs_mean, obs_std=spec.obs_std, norm=False)
    for m in tokenizer.modules():
        if isinstance(m, nn.Linear):
            _init_linear(m, np.sqrt(2))
    return tokenizer


# -------------------------------------------------------------------------------------- agent
class RecurrentPPO(Agent):
    Config = PPOConfig
    sources = ("env",)

    def __init__(self, config: PPOConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        d = config.d_model
        backbone = make_backbone(config)  # built first: the initial weights of a seed are those seqrl always drew
        self.tokenizer = _encoder(spec, d)
        self.backbone = backbone
        self.head = ActionHead(d, spec.action_space, gaussian=True, init_log_std=config.init_log_std)
        _init_linear(self.head.out, 0.01)
        self.critic = _init_linear(nn.Linear(d, 1), 1.0)
        self.critic_memory = None
        if config.separate_critic:  # built last: the shared layout keeps the weights a seed always gave
            self.critic_memory = nn.ModuleDict({"backbone": make_backbone(config), "tokenizer": _encoder(spec, d)})
        self.segment = config.seq_len  # the env source records the memory before every segment-th step

    @classmethod
    def check_preset(cls, preset: Any) -> None:
        super().check_preset(preset)
        cfg, src = preset.policy, preset.source
        if src.n_steps % cfg.seq_len:
            raise ValueError(f"policy.seq_len {cfg.seq_len} does not divide source.n_steps {src.n_steps}")
        n_seq = src.n_envs * src.n_steps // cfg.seq_len
        if n_seq % cfg.minibatches:
            raise ValueError(f"policy.minibatches {cfg.minibatches} does not divide the {n_seq} sequences of a "
                             f"collection (source.n_envs * source.n_steps / policy.seq_len)")

    def _embed(self, obs: torch.Tensor, tokenizer: TrajectoryTokenizer | None = None) -> torch.Tensor:
        """obs (..., *obs_shape) -> (..., d): the tokenizer's "s" token (no timestep embedding), then a ReLU."""
        return torch.relu((self.tokenizer if tokenizer is None else tokenizer).step("s", obs, None))

    def features(self, obs: Any, state: Any, first: torch.Tensor | None = None, step: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The memories over sequences obs (S, L, ...) with episode starts `first` (S, L), or over one step
        (n, ...) with `step`: (actor features, critic features, state), features (S, L, d) or (n, d)."""
        def read(backbone, tokenizer, s):
            x = self._embed(obs, tokenizer)
            return backbone.step(x, s) if step else backbone(x, s, first)

        if self.critic_memory is None:
            h, state = read(self.backbone, self.tokenizer, state)
            return h, h, state
        h, actor = read(self.backbone, self.tokenizer, state[0])
        hv, critic = read(self.critic_memory["backbone"], self.critic_memory["tokenizer"], state[1])
        return h, hv, (actor, critic)

    # ---------------------------------------------------------------------------------- collect
    @torch.no_grad()
    def explore(self, obs: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Any]:
        """obs (n, *obs_shape) -> sampled action (n,) or (n, A) in [-1, 1] units (unclipped), the env's
        action, {"logp", "value"} (n,) each, state."""
        h, hv, state = self.features(obs, state, step=True)
        dist = self.head.dist(h)
        action = dist.sample()
        logp, _ = self.head.log_prob_entropy(dist, action)
        env_action = action if self.head.discrete else self.head.to_env(action)
        return action, env_action, {"logp": logp, "value": self.critic(hv)[:, 0]}, state

    @torch.no_grad()
    def bootstrap(self, obs: torch.Tensor, state: Any) -> dict[str, torch.Tensor]:
        """{"value": (n,)} at observations not acted on, from `state` (which is not advanced): the final
        observation of a truncated episode, the observation after a rollout."""
        _, hv, _ = self.features(obs, state, step=True)
        return {"value": self.critic(hv)[:, 0]}

    def rollout_batches(self, ro: Any, generator: torch.Generator) -> Iterator[PPOBatch]:
        cfg, L = self.config, self.config.seq_len
        rew = ro.rew + cfg.gamma * ro.final_extras["value"]  # a truncated episode's bootstrap (0 elsewhere)
        adv, ret = gae(rew, ro.extras["value"], ro.term | ro.trunc, ro.last_extras["value"], cfg.gamma, cfg.gae_lambda)
        seq = {"obs": ro.obs, "act": ro.act, "first": ro.first, "logp": ro.extras["logp"],
               "value": ro.extras["value"], "adv": adv, "ret": ret}
        seq = {k: tree_map(lambda x: sequences(x, L), v) for k, v in seq.items()}  # obs: per leaf for Dict/Tuple
        state0 = stack_states(ro.starts)  # (S, ...) the memory each sequence starts from
        S = seq["first"].shape[0]
        mb = S // cfg.minibatches
        for _ in range(cfg.epochs):
            # torch's global RNG (which checkpoints carry), as the sampling of actions: a seed gives the runs
            # seqrl's PPO always gave
            perm = torch.randperm(S, device=ro.first.device)
            kls = []
            for k in range(cfg.minibatches):
                idx = perm[k * mb : (k + 1) * mb]
                scalars = yield PPOBatch(state=index_state(state0, idx),
                                         **{n: tree_map(lambda x: x[idx], v) for n, v in seq.items()})
                if scalars is not None:
                    kls.append(float(scalars["approx_kl"]))
            if cfg.target_kl and kls and np.mean(kls) > cfg.target_kl:
                return

    # ----------------------------------------------------------------------------------- losses
    def losses(self, b: PPOBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        h, hv, _ = self.features(b.obs, b.state, b.first)  # (S, L, d) each
        logp, entropy = self.head.log_prob_entropy(self.head.dist(h), b.act)
        value = self.critic(hv)[..., 0]
        return ppo_loss(logp, b.logp, b.adv, value, b.value, b.ret, entropy, cfg.clip_coef, cfg.vf_clip, cfg.ent_coef,
                        cfg.vf_coef, cfg.norm_adv)

    # ----------------------------------------------------------------------------------- acting
    def initial_state(self, n_envs: int, device: torch.device | str) -> Any:
        state = self.backbone.initial_state(n_envs, device)
        if self.critic_memory is None:
            return state
        return state, self.critic_memory["backbone"].initial_state(n_envs, device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Deterministic: the most likely action (Discrete) or the Gaussian's mean clipped to the bounds (Box)."""
        h, _, state = self.features(obs, state, step=True)  # the critic's memory too: one state layout
        return self.head.to_env(self.head(h)), state

    def observe(self, state: Any, reward: torch.Tensor, done: torch.Tensor) -> Any:
        """Clear the memory of the envs whose episode ended (`done` (n,) bool)."""
        if self.critic_memory is None:
            return self.backbone.reset(state, done)
        return self.backbone.reset(state[0], done), self.critic_memory["backbone"].reset(state[1], done)
