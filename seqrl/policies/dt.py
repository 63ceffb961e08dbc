"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via Sequence
Modeling", arXiv:2106.01345).

Dimension letters: B batch, K context steps, n envs, d model width, A action dim.

Tokens per step: return-to-go, state, action ("R s a"), with in-episode timestep embeddings. A
causal transformer reads them; the action at step t is predicted from the output at the state token
of step t, so it sees R_<=t, s_<=t and a_<t. Training minimises the masked MSE to the dataset's
actions (tanh-squashed for Box spaces) or their cross-entropy (Discrete). Acting starts from a
target return, subtracts each reward received, and steps the backbone one token at a time against a
KV cache of the last 3K tokens.

Departure from the paper's evaluation, on purpose: the reference code re-encodes the last K steps
from scratch at every env step (O(K^2) per step, and the oldest token sees no history). Here each token
attends to the 3K-1 tokens before it, cached: O(K) per step. Training windows of K steps are the same
in both, since a window never exceeds the attention span.

Training feeds the backbone the first 3K-1 tokens of a K-step window: the last action token predicts
nothing and no earlier token attends to it, so dropping it changes no prediction, and 3K-1 tokens fit
the attention window exactly, so training runs PyTorch's fused causal attention (`is_causal=True`)
instead of a masked one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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
    """Defaults: Chen et al. 2021, Gym (D4RL) settings (their Table 8)."""

    embed_dim: int = 128
    """model width d"""
    n_layers: int = 3
    """transformer blocks"""
    n_heads: int = 1
    """attention heads"""
    context_len: int = 20
    """K: steps per training window; acting attends to the last 3K-1 tokens"""
    dropout: float = 0.1
    """dropout on embeddings, attention and residual branches"""
    activation: Literal["relu", "gelu"] = "relu"
    """MLP nonlinearity (the reference code uses ReLU)"""

    def __post_init__(self):
        require_at_least(self, 1, ("embed_dim", "n_layers", "n_heads", "context_len"))
        require_in(self, 0.0, 1.0, ("dropout",))
        if self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by n_heads {self.n_heads}")


@dataclass
class DTState:
    kv: KVState
    rtg: torch.Tensor  # (n,) return still to collect
    t: torch.Tensor  # (n,) in-episode timestep
    target: torch.Tensor  # (n,) target return each env restarts from


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

    # --------------------------------------------------------------------------------- training
    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return windows(store, batch_size, self.config.context_len, generator)

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

    def initial_state(self, n_envs: int, device: torch.device | str, target_return: float | None = None) -> DTState:
        target = self.spec.env.target_returns[0] if target_return is None else target_return
        tgt = torch.full((n_envs,), float(target), device=device)
        return DTState(self.backbone.initial_state(n_envs, device), tgt.clone(),
                       torch.zeros(n_envs, dtype=torch.long, device=device), tgt)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: DTState) -> tuple[torch.Tensor, DTState]:
        """obs (n, *obs_shape) -> actions (n, A) (or (n,) for Discrete). Three backbone tokens per env step."""
        tok = self.tokenizer.step
        x = torch.stack([tok("R", state.rtg, state.t), tok("s", obs, state.t)], dim=1)  # (n, 2, d)
        h, kv = self.backbone(x, state.kv)
        action = self.head.to_env(self.head(h[:, 1]))
        _, kv = self.backbone.step(tok("a", action, state.t), kv)
        return action, DTState(kv, state.rtg, state.t, state.target)

    def observe(self, state: DTState, reward: torch.Tensor, done: torch.Tensor) -> DTState:
        """Subtract the reward from the return to go; restart finished envs from the target."""
        rtg = torch.where(done, state.target, state.rtg - reward)
        t = torch.where(done, torch.zeros_like(state.t), state.t + 1)
        return DTState(self.backbone.reset(state.kv, done), rtg, t, state.target)
