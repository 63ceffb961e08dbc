"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence
Modeling", arXiv:2106.01345).

Dimension letters: B batch, K context steps, n envs, d model width, A action dim.

Tokens per step: return-to-go, state, action ("R s a"), with in-episode timestep embeddings. A
causal transformer reads them; the action at step t is predicted from the output at the state token
of step t, so it sees R_<=t, s_<=t and a_<t. Training minimises the masked MSE to the dataset's
actions (tanh-squashed for Box spaces) or their cross-entropy (Discrete). Acting starts from a
target return and subtracts each reward received.

Two acting modes (`act_mode`; `seqrl eval --act` picks one for any checkpoint, the weights are the same):

- "stream" (default): the backbone steps one token at a time against a KV cache of the last 3K-1
  tokens, O(K) per env step. Each token attends to the 3K-1 tokens before it, and those were computed
  the same way, so past the first K steps of an episode a deeper layer sees further back than a
  training window (layer l reaches about l*K steps). Up to step K-1 it is exactly window acting.
- "window" (the paper's and d3rlpy's evaluation): every env step re-encodes the last K steps of the
  episode (R, s, a and timesteps; the current step's R and s) from an empty state, exactly as a
  training window is encoded, O(K^2) per env step. The tokens of each step are embedded once and kept
  (`TokenWindow`); an embedding depends on its own step only, so that is the same as embedding the
  window again.

Training feeds the backbone the first 3K-1 tokens of a K-step window: the last action token predicts
nothing and no earlier token attends to it, so dropping it changes no prediction, and 3K-1 tokens fit
the attention window exactly, so training runs PyTorch's fused causal attention (`is_causal=True`)
instead of a masked one. Window acting does the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn

import torch.nn.functional as F

from seqrl.data.samplers import windows
from seqrl.data.store import Batch, ReplayStore
from seqrl.nn.transformer import CausalTransformer, KVState, gpt2_init
from seqrl.policies.base import ActionHead, Agent, EvalProtocol, TaskSpec
from seqrl.presets import require_at_least, require_in
from seqrl.tokenizer import TrajectoryTokenizer


@dataclass(frozen=True)
class DTConfig:
    """Defaults: Chen et al. 2021, Gym (D4RL) settings (their Table 8), except acting, which streams (act_mode)."""

    embed_dim: int = 128
    """model width d"""
    n_layers: int = 3
    """transformer blocks"""
    n_heads: int = 1
    """attention heads"""
    context_len: int = 20
    """K: steps per training window and per acting window; stream acting attends to the last 3K-1 tokens"""
    dropout: float = 0.1
    """dropout on embeddings, attention and residual branches"""
    activation: Literal["relu", "gelu"] = "relu"
    """MLP nonlinearity (the reference code uses ReLU)"""
    window_anchor: Literal["start", "end"] = "start"
    """training windows: "start" draws each window's first step uniformly (the reference code, CORL); "end"
    draws its last step and reaches back up to K-1 steps inside the episode (d3rlpy), so that each of an
    episode's first K-1 steps s is trained with its whole history K-s times instead of once"""
    embed_init: Literal["normal", "default"] = "normal"
    """initial weights of the R, s, a embeddings and the action head: "normal" N(0, 0.02) with zero biases,
    as the backbone's layers (GPT-2's scheme, CORL); "default" PyTorch's nn.Linear initialisation, which the
    reference code and d3rlpy leave them at. The timestep embedding is N(0, 0.02) either way"""
    act_mode: Literal["stream", "window"] = "stream"
    """acting: "stream" steps a KV cache of 3K-1 tokens over the whole episode (O(K) per step); "window"
    re-encodes the last K steps from an empty state at every step, as trained and as the paper acts
    (O(K^2) per step). Acting only: `seqrl eval --act` overrides it for any checkpoint"""

    def __post_init__(self):
        require_at_least(self, 1, ("embed_dim", "n_layers", "n_heads", "context_len"))
        require_in(self, 0.0, 1.0, ("dropout",))
        check_act_mode(self.act_mode)
        if self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by n_heads {self.n_heads}")


ACT_MODES = ("stream", "window")


def next_rtg(rtg: torch.Tensor, t: torch.Tensor, target: torch.Tensor, reward: torch.Tensor,
             done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """After an env step (n,) each: the return still to collect and the timestep; finished envs restart from
    the target at step 0. What every return-conditioned acting state (DT, DM, either mode) does."""
    return torch.where(done, target, rtg - reward), torch.where(done, torch.zeros_like(t), t + 1)


def check_act_mode(mode: str) -> None:
    if mode not in ACT_MODES:
        raise ValueError(f"act_mode must be one of {list(ACT_MODES)}, got {mode!r}")


def set_act_mode(agent: nn.Module, mode: str) -> None:
    """Make a DT or DM agent act in `mode` ("stream" or "window") with the same weights. ValueError for an
    unknown mode or an agent with one acting mode."""
    if not hasattr(agent.config, "act_mode"):
        raise ValueError(f"agent {type(agent).__name__} has one acting mode (dt and dm have two)")
    agent.config = replace(agent.config, act_mode=mode)


@dataclass
class DTState:
    """Stream acting's state."""

    kv: KVState
    rtg: torch.Tensor  # (n,) return still to collect
    t: torch.Tensor  # (n,) in-episode timestep
    target: torch.Tensor  # (n,) target return each env restarts from


# ------------------------------------------------------------------------------------ window acting
@dataclass
class TokenWindow:
    """Window acting's state (DT and DM): the embedded R, s, a tokens of each env's last steps.

    Slot j < `held` of `tokens` holds the j-th oldest of the `held` earlier steps of the current
    episode kept (at most K-1); the current step goes to slot `held`; slots after it are stale and,
    the backbone being causal, read by nothing (a training window's trailing padding)."""

    tokens: torch.Tensor  # (n, K, 3, d) oldest step first
    held: torch.Tensor  # (n,) long, in [0, K-1]
    rtg: torch.Tensor  # (n,) return still to collect
    t: torch.Tensor  # (n,) in-episode timestep
    target: torch.Tensor  # (n,) target return each env restarts from

    @classmethod
    def empty(cls, n_envs: int, K: int, d: int, target: torch.Tensor) -> "TokenWindow":
        dev = target.device
        return cls(torch.zeros(n_envs, K, 3, d, device=dev), torch.zeros(n_envs, dtype=torch.long, device=dev),
                   target.clone(), torch.zeros(n_envs, dtype=torch.long, device=dev), target)

    def with_current(self, r_tok: torch.Tensor, s_tok: torch.Tensor) -> torch.Tensor:
        """The current step's R and s tokens (n, d) put at slot `held` -> the window (n, K, 3, d)."""
        x = self.tokens.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        x[rows, self.held, 0] = r_tok.to(x.dtype)
        x[rows, self.held, 1] = s_tok.to(x.dtype)
        return x

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """Backbone output over the window (n, 3K or 3K-1, d) -> (n, d) at the current step's s token."""
        return h[torch.arange(h.shape[0], device=h.device), 3 * self.held + 1]

    def advance(self, x: torch.Tensor, a_tok: torch.Tensor) -> "TokenWindow":
        """Complete the current step of window x (n, K, 3, d), `with_current`'s (written in place), with its
        action token (n, d) and keep it: a full window (K-1 earlier steps held) drops its oldest step."""
        rows = torch.arange(x.shape[0], device=x.device)
        x[rows, self.held, 2] = a_tok.to(x.dtype)
        K = x.shape[1]
        full = self.held == K - 1
        tokens = torch.where(full[:, None, None, None], x.roll(-1, dims=1), x)
        return TokenWindow(tokens, torch.clamp(self.held + 1, max=K - 1), self.rtg, self.t, self.target)

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> "TokenWindow":
        """Subtract the reward from the return to go; finished envs restart from the target, empty."""
        rtg, t = next_rtg(self.rtg, self.t, self.target, reward, done)
        return TokenWindow(self.tokens, torch.where(done, torch.zeros_like(self.held), self.held), rtg, t, self.target)


class DecisionTransformer(Agent):
    Config = DTConfig

    def __init__(self, config: DTConfig, spec: TaskSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.tokenizer = TrajectoryTokenizer(
            "R s a", spec.observation_space, spec.action_space, config.embed_dim, readout={"action": "s"},
            obs_mean=spec.obs_mean, obs_std=spec.obs_std, reward_scale=spec.env.reward_scale,
            max_timestep=spec.env.max_episode_steps, dropout=config.dropout,
        )
        # window 3K - 1: the state token of step t then sees R, s, a of steps t-K+1 .. t-1 and R_t, exactly
        # what the state token of the last step of a K-step training window sees
        self.backbone = CausalTransformer(config.embed_dim, config.n_layers, config.n_heads,
                                          window=3 * config.context_len - 1, dropout=config.dropout,
                                          activation=config.activation)
        self.head = ActionHead(config.embed_dim, spec.action_space)
        for part in (self.tokenizer, self.head):  # the backbone initialises itself the same way
            part.apply(functools.partial(gpt2_init, n_layers=config.n_layers))
        if config.embed_init == "default":
            for m in [*self.tokenizer.embed.modules(), *self.head.modules()]:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()

    # --------------------------------------------------------------------------------- training
    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return windows(store, batch_size, self.config.context_len, generator, self.config.window_anchor)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Windows (B, K) -> action predictions (B, K, A), in [-1, 1] units for Box spaces."""
        tokens = self.tokenizer(batch)
        # the first 3K-1 tokens (see the module docstring): padding is trailing, so fused causal attention
        h, _ = self.backbone(tokens.x[:, :-1])  # (B, 3K-1, d)
        h = F.pad(h, (0, 0, 0, 1))  # (B, 3K, d): the dropped token's slot, read by no head
        return self.head(tokens.heads(h)["action"])

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.head.loss(self.predict(batch), batch.act, batch.mask)

    # ----------------------------------------------------------------------------------- acting
    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol.target_returns(self.spec.env.target_returns)

    def initial_state(self, n_envs: int, device: torch.device | str,
                      target_return: float | None = None) -> DTState | TokenWindow:
        """The state of `config.act_mode`: a KV cache (stream) or the episode's last steps (window)."""
        target = self.spec.env.target_returns[0] if target_return is None else target_return
        tgt = torch.full((n_envs,), float(target), device=device)
        if self.config.act_mode == "window":
            return TokenWindow.empty(n_envs, self.config.context_len, self.config.embed_dim, tgt)
        return DTState(self.backbone.initial_state(n_envs, device), tgt.clone(),
                       torch.zeros(n_envs, dtype=torch.long, device=device), tgt)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: DTState | TokenWindow) -> tuple[torch.Tensor, DTState | TokenWindow]:
        """obs (n, *obs_shape) -> actions (n, A) (or (n,) for Discrete), in the mode the state was made for.
        Stream: three backbone tokens per env step against the cache. Window: one forward over 3K-1 tokens."""
        tok = self.tokenizer.step
        if isinstance(state, TokenWindow):
            x = state.with_current(tok("R", state.rtg, state.t), tok("s", obs, state.t))  # (n, K, 3, d)
            h, _ = self.backbone(x.flatten(1, 2)[:, :-1])  # (n, 3K-1, d): fused causal attention, as in training
            action = self.head.to_env(self.head(state.read(h)))
            return action, state.advance(x, tok("a", action, state.t))
        x = torch.stack([tok("R", state.rtg, state.t), tok("s", obs, state.t)], dim=1)  # (n, 2, d)
        h, kv = self.backbone(x, state.kv)
        action = self.head.to_env(self.head(h[:, 1]))
        _, kv = self.backbone.step(tok("a", action, state.t), kv)
        return action, DTState(kv, state.rtg, state.t, state.target)

    def observe(self, state: DTState | TokenWindow, reward: torch.Tensor, done: torch.Tensor) -> DTState | TokenWindow:
        """Subtract the reward from the return to go; restart finished envs from the target."""
        if isinstance(state, TokenWindow):
            return state.observe(reward, done)
        rtg, t = next_rtg(state.rtg, state.t, state.target, reward, done)
        return DTState(self.backbone.reset(state.kv, done), rtg, t, state.target)
