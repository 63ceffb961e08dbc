"""Decision Mamba (Lv et al. 2024, "Decision Mamba: A Multi-Grained State Space Model with
Self-Evolution Regularization for Offline RL", NeurIPS, arXiv:2406.05427; authors' code:
github.com/aopolin-lv/DecisionMamba).

Dimension letters: B batch, K context steps, n envs, d model width, A action dim, S observation dim.

Same tokens as DT: return-to-go, state, action per step ("R s a") with in-episode timestep
embeddings, read by a multi-grained Mamba (seqrl/nn/mamba.py, fine_group=3):

- coarse-grained SSM: Mamba over the whole interleaved token sequence (inter-step history);
- fine-grained SSM: a second Mamba mixer per layer whose scan runs inside each (R, s, a) triplet,
  from a zero state at every step (intra-step relations), LayerNorm'ed and added to the coarse output.

The action at step t is read at the state token of step t (sees R_<=t, s_<=t, a_<t). Two auxiliary
"inverse" objectives (the paper's ILO; the authors' `predict_sr`) read the action token of step t and
predict the next state and the next return-to-go, Huber loss, weights 0.05 / 0.05 against 0.9 for the
action (the authors' code). The next-state target is the normalised observation vector, so that head
exists only for a flat float Box observation; for any other space (Discrete, images, Dict, ...) it is
off and only the return-to-go is predicted.

Progressive self-evolution regularisation (PSER): the action labels are refined with the policy's own
earlier predictions, a convex mix whose weight grows linearly over training and is capped:

    ã_k = (1 - α_k) a + α_k â_{k-1},    α_k = min(α_max, α_T k / K_total),    loss = ||π_k(τ) - ã_k||²

k counts this policy's updates, K_total = `pser_steps`; â_{k-1} is the action predicted for the same
window by an earlier copy of the policy, frozen (`self.earlier`), refreshed to the current weights
every `pser_interval` updates (the authors step α once per iteration of 2,500 updates; an "earlier
policy" is the one of the previous iteration, as in PSKD, Kim et al. 2021, from which the method
comes). The earlier prediction must come from other weights than the current ones: mixing in the
current prediction (stop-gradient) would only rescale the MSE's gradient by (1 - α). Discrete
actions mix the one-hot label with the earlier policy's softmax and use soft cross-entropy (PSKD).
The schedule is explicit state: `losses` only reads the update count k; the trainer calls
`after_update` once per update, which counts and refreshes the earlier copy. Both are tensor ops on
buffers (no host sync), so a CUDA-graph replay follows them, and the copy and the count sit in the
state_dict: a checkpoint resumes the schedule exactly.

Two acting modes (`act_mode`; `seqrl eval --act` picks one for any checkpoint, the weights are the same):

- "stream" (the config's default; agents/dm.toml picks "window", which scored higher on the D4RL-style
  data: docs/results.md): recurrent, three `backbone.step` calls per env step (R, s, then the chosen a),
  O(1) each whatever the episode's length; the state holds all of the episode so far. Training never
  runs the model past K steps from an empty state, so past step K-1 of an episode this is a longer
  memory than the one trained. Up to step K-1 it is window acting (the backbone is causal).
- "window" (as trained, and as DT's reference evaluation acts): every env step re-encodes the last K
  steps of the episode (the current step's R and s; a trailing slot for its action, which nothing
  reads) with one forward over 3K tokens from an empty state, O(K) per env step. The tokens are
  embedded once per step and kept (`seqrl.policies.dt.TokenWindow`, shared with DT).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqrl.data.samplers import windows
from seqrl.data.store import Batch, ReplayStore
from seqrl.nn.mamba import MambaBackbone, MambaState
from seqrl.nn.transformer import gpt2_init
from seqrl.policies.base import ActionHead, Agent, EvalProtocol, TaskSpec
from seqrl.policies.dt import TokenWindow, check_act_mode, next_rtg
from seqrl.presets import require_at_least
from seqrl.tokenizer import TrajectoryTokenizer


@dataclass(frozen=True)
class DMConfig:
    """Defaults: the authors' code and scripts (run.sh, scripts/run_gym.sh, mamba_config); see agents/dm.toml."""

    # model
    embed_dim: int = 128
    """model width d"""
    n_layers: int = 3
    """Mamba layers"""
    d_state: int = 16
    """N: SSM state size per channel (Mamba default)"""
    d_conv: int = 4
    """kernel of the causal depthwise conv (Mamba default)"""
    expand: int = 2
    """inner width E = expand * d (Mamba default)"""
    context_len: int = 20
    """K: steps per training window (the authors' K)"""
    window_anchor: Literal["start", "end"] = "start"
    """training windows: "start" draws each window's first step uniformly (the authors' code); "end" draws its
    last step and reaches back up to K-1 steps inside the episode, so that each of an episode's first K-1 steps
    s is trained with its whole history K-s times instead of once (as DT's option of the same name)"""
    dropout: float = 0.1
    """dropout on the token embeddings"""
    multi_grained: bool = True
    """add the fine-grained (intra-triplet) SSM branch; False: plain Mamba (the paper's 'w/o MG')"""
    # inverse learning objectives
    action_weight: float = 0.9
    """weight of the action loss"""
    state_weight: float = 0.05
    """weight of the next-state prediction from the action token (Huber; flat float Box observations only)"""
    rtg_weight: float = 0.05
    """weight of the next return-to-go prediction from the action token (Huber)"""
    # progressive self-evolution regularisation
    pser: bool = True
    """refine action labels with an earlier copy of the policy (False: the paper's 'w/o PSER')"""
    pser_alpha_T: float = 1.0
    """α_T: the weight of the earlier prediction would reach this at the end of the schedule"""
    pser_alpha_max: float = 0.5
    """cap on that weight (the authors' lower_bound): the dataset label keeps at least 1 - alpha_max"""
    pser_steps: int = 100_000
    """K_total: updates over which α grows linearly (set it to trainer.steps)"""
    pser_interval: int = 2_500
    """updates between refreshes of the earlier policy (the authors' steps per iteration)"""
    # acting
    act_mode: Literal["stream", "window"] = "stream"
    """"stream" steps the recurrent state over the whole episode (O(1) per step); "window" re-encodes
    the last K steps from an empty state at every step, as trained (O(K) per step). Acting only:
    `seqrl eval --act` overrides it for any checkpoint"""

    def __post_init__(self):
        require_at_least(self, 1, ("embed_dim", "n_layers", "d_state", "d_conv", "expand", "context_len",
                                   "pser_steps", "pser_interval"))
        for name in ("dropout", "pser_alpha_max"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        require_at_least(self, 0, ("action_weight", "state_weight", "rtg_weight", "pser_alpha_T"))
        if self.action_weight == 0:
            raise ValueError("action_weight must be > 0: the action loss is what trains the policy")
        check_act_mode(self.act_mode)


@dataclass
class DMState:
    """Stream acting's state."""

    backbone: MambaState
    rtg: torch.Tensor  # (n,) return still to collect
    t: torch.Tensor  # (n,) in-episode timestep
    target: torch.Tensor  # (n,) target return each env restarts from


class DMNet(nn.Module):
    """Tokenizer + multi-grained Mamba + heads: windows -> (action, next-state, next-rtg) predictions."""

    def __init__(self, config: DMConfig, spec: TaskSpec):
        super().__init__()
        d = config.embed_dim
        self.tokenizer = TrajectoryTokenizer(
            "R s a", spec.observation_space, spec.action_space, d, readout={"action": "s", "inverse": "a"},
            obs_mean=spec.obs_mean, obs_std=spec.obs_std, reward_scale=spec.env.reward_scale,
            max_timestep=spec.env.max_episode_steps, dropout=config.dropout)
        self.backbone = MambaBackbone(d, config.n_layers, config.d_state, config.d_conv, config.expand,
                                      fine_group=3 if config.multi_grained else 0)
        self.head = ActionHead(d, spec.action_space)
        sp = spec.observation_space  # the next-state target needs a flat float Box (module docstring)
        flat = isinstance(sp, gym.spaces.Box) and np.issubdtype(sp.dtype, np.floating)
        obs_dim = int(np.prod(sp.shape)) if flat else 0
        self.state_head = nn.Linear(d, obs_dim) if obs_dim and config.state_weight > 0 else None
        self.rtg_head = nn.Linear(d, 1) if config.rtg_weight > 0 else None
        for part in (self.tokenizer, self.head, self.state_head, self.rtg_head):  # N(0, 0.02), as DT
            if part is not None:
                part.apply(functools.partial(gpt2_init, n_layers=config.n_layers))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Windows (B, K) -> {"action": (B, K, A) [-1, 1] units or logits, "state": (B, K, S), "rtg": (B, K)}."""
        tokens = self.tokenizer(batch)
        h, _ = self.backbone(tokens.x)  # (B, 3K, d); padding is trailing and the model causal
        heads = tokens.heads(h)
        out = {"action": self.head(heads["action"])}
        if self.state_head is not None:
            out["state"] = self.state_head(heads["inverse"])
        if self.rtg_head is not None:
            out["rtg"] = self.rtg_head(heads["inverse"]).squeeze(-1)
        return out


# ------------------------------------------------------------------------------------------- loss
def pser_alpha(k: torch.Tensor, alpha_T: float, alpha_max: float, total: int) -> torch.Tensor:
    """α_k = min(α_max, α_T k / K_total): the weight of the earlier policy's prediction at update k."""
    return torch.clamp(alpha_T * k.float() / total, max=alpha_max)


def refine_labels(label: torch.Tensor, earlier: torch.Tensor, alpha: torch.Tensor, discrete: bool) -> torch.Tensor:
    """ã = (1 - α) label + α earlier. Box: label, earlier (B, K, A) in [-1, 1]. Discrete: label (B, K)
    int and earlier (B, K, n) logits -> a distribution (B, K, n)."""
    if discrete:
        label = F.one_hot(label, earlier.shape[-1]).float()
        earlier = earlier.softmax(-1)
    return (1 - alpha) * label + alpha * earlier


def dm_loss(pred: dict[str, torch.Tensor], batch: Batch, target: torch.Tensor, cfg: DMConfig, discrete: bool,
            obs_norm: tuple[torch.Tensor, torch.Tensor] | None, reward_scale: float) -> dict[str, torch.Tensor]:
    """The DM objective. target: the (refined) action target, (B, K, A) or a distribution (B, K, n);
    obs_norm: the tokenizer's (mean, std), used by the next-state term (None when there is none)."""
    m = batch.mask.float()
    a = pred["action"].float()
    if discrete:
        ce = -(target * a.log_softmax(-1)).sum(-1)  # soft cross-entropy, (B, K)
        loss_a = (ce * m).sum() / m.sum()
    else:
        loss_a = (((a - target) ** 2).mean(-1) * m).sum() / m.sum()
    out = {"loss_action": cfg.action_weight * loss_a}
    nxt = (batch.mask[:, 1:] & batch.mask[:, :-1]).float()  # (B, K-1): step t+1 exists
    n = nxt.sum().clamp(min=1)
    if "state" in pred:  # next state, in the tokenizer's normalised units
        s_next = (batch.obs[:, 1:].float() - obs_norm[0]) / obs_norm[1]
        hub = F.smooth_l1_loss(pred["state"][:, :-1].float(), s_next.flatten(2), reduction="none").mean(-1)
        out["loss_state"] = cfg.state_weight * (hub * nxt).sum() / n
    if "rtg" in pred:  # next return-to-go, in the tokenizer's scaled units
        hub = F.smooth_l1_loss(pred["rtg"][:, :-1].float(), batch.rtg[:, 1:].float() * reward_scale, reduction="none")
        out["loss_rtg"] = cfg.rtg_weight * (hub * nxt).sum() / n
    return out


class DecisionMamba(Agent):
    Config = DMConfig

    def __init__(self, config: DMConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.net = DMNet(config, spec)
        self.earlier = copy.deepcopy(self.net).requires_grad_(False).eval() if config.pser else None
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # PSER's k, travels in checkpoints

    def train(self, mode: bool = True) -> "DecisionMamba":
        super().train(mode)
        if self.earlier is not None:
            self.earlier.eval()  # the earlier policy predicts without dropout
        return self

    @property
    def tokenizer(self) -> TrajectoryTokenizer:
        return self.net.tokenizer

    @property
    def backbone(self) -> MambaBackbone:
        return self.net.backbone

    @property
    def head(self) -> ActionHead:
        return self.net.head

    # --------------------------------------------------------------------------------- training
    def predict(self, batch: Batch) -> torch.Tensor:
        """Windows (B, K) -> action predictions (B, K, A), in [-1, 1] units for Box spaces."""
        return self.net(batch)["action"]

    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return windows(store, batch_size, self.config.context_len, generator, self.config.window_anchor)

    @torch.no_grad()
    def after_update(self) -> None:
        """k += 1; every `pser_interval` updates the earlier policy becomes the current one (a lerp with
        weight 0 or 1: no host sync, so CUDA graphs replay it)."""
        self.updates += 1
        if self.earlier is None:
            return
        w = (self.updates % self.config.pser_interval == 0).float()
        earlier, current = list(self.earlier.parameters()), [p.detach() for p in self.net.parameters()]
        # e <- (1 - w) e + w p, exact for w in {0, 1}, in three multi-tensor kernels instead of one per tensor
        torch._foreach_mul_(earlier, 1 - w)  # (the Tensor overload keeps w on the device: _foreach_lerp_ reads it)
        torch._foreach_add_(earlier, torch._foreach_mul(current, w))

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg, head = self.config, self.net.head
        pred = self.net(batch)
        label = batch.act if head.discrete else (batch.act - head.center) / head.scale
        out: dict[str, torch.Tensor] = {}
        if cfg.pser:
            alpha = pser_alpha(self.updates, cfg.pser_alpha_T, cfg.pser_alpha_max, cfg.pser_steps)
            with torch.no_grad():
                earlier = self.earlier(batch)["action"].float()
            target = refine_labels(label, earlier, alpha, head.discrete)
            out["pser_alpha"] = alpha.detach()
        else:
            target = F.one_hot(label, pred["action"].shape[-1]).float() if head.discrete else label
        tok = self.net.tokenizer
        norm = (tok.obs_mean, tok.obs_std) if self.net.state_head is not None else None  # flat float Box only
        out |= dm_loss(pred, batch, target, cfg, head.discrete, norm, tok.reward_scale)
        with torch.no_grad():  # the plain behaviour-cloning error, comparable with DT's loss_action
            bc = head.loss(pred["action"].detach(), batch.act, batch.mask)["loss_action"]
        out["action_error"] = bc
        return out

    # ----------------------------------------------------------------------------------- acting
    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol.target_returns(self.spec.env.target_returns)

    def initial_state(self, n_envs: int, device: torch.device | str,
                      target_return: float | None = None) -> DMState | TokenWindow:
        """The state of `config.act_mode`: the recurrent state (stream) or the episode's last steps (window)."""
        target = self.spec.env.target_returns[0] if target_return is None else target_return
        tgt = torch.full((n_envs,), float(target), device=device)
        if self.config.act_mode == "window":
            return TokenWindow.empty(n_envs, self.config.context_len, self.config.embed_dim, tgt)
        return DMState(self.backbone.initial_state(n_envs, device), tgt.clone(),
                       torch.zeros(n_envs, dtype=torch.long, device=device), tgt)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: DMState | TokenWindow) -> tuple[torch.Tensor, DMState | TokenWindow]:
        """obs (n, *obs_shape) -> actions (n, A) (or (n,) for Discrete), in the mode the state was made for.
        Stream: three O(1) backbone steps. Window: one forward over 3K tokens from an empty state."""
        tok, bb = self.tokenizer.step, self.backbone
        if isinstance(state, TokenWindow):
            x = state.with_current(tok("R", state.rtg, state.t), tok("s", obs, state.t))  # (n, K, 3, d)
            h, _ = bb(x.flatten(1, 2))  # (n, 3K, d): whole triplets, as a training window
            action = self.head.to_env(self.head(state.read(h)))
            return action, state.advance(x, tok("a", action, state.t))
        _, s = bb.step(tok("R", state.rtg, state.t), state.backbone)
        h, s = bb.step(tok("s", obs, state.t), s)
        action = self.head.to_env(self.head(h))
        _, s = bb.step(tok("a", action, state.t), s)
        return action, DMState(s, state.rtg, state.t, state.target)

    def observe(self, state: DMState | TokenWindow, reward: torch.Tensor, done: torch.Tensor) -> DMState | TokenWindow:
        """Subtract the reward from the return to go; restart finished envs from the target."""
        if isinstance(state, TokenWindow):
            return state.observe(reward, done)
        rtg, t = next_rtg(state.rtg, state.t, state.target, reward, done)
        return DMState(self.backbone.reset(state.backbone, done), rtg, t, state.target)
