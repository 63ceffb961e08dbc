"""In-context RL agents: DPT (Lee et al. 2023, "Supervised Pretraining Can Learn In-Context Reinforcement
Learning", arXiv:2306.14892) and AD (Laskin et al. 2022, "In-context Reinforcement Learning with Algorithm
Distillation", arXiv:2210.14215), on one network.

Dimension letters: B batch, K transitions per sample (`context_len`), n envs, d model width, A actions,
S states.

Both read a context of transitions through the shared tokenizer's in-context layout "s a r" (no timestep
embedding: a DPT context is an unordered set and an AD history runs across episodes) with a causal backbone
(`backbone = "transformer" | "mamba"`), and predict an action at every "s" token from everything before it:
the transitions 0..t-1 and the state s_t. `tokens` chooses m, the backbone tokens per transition: "s a r"
(m = 3, the tokenizer's tokens as they are) or "s ar" (m = 2: the state, then the action's and the reward's
embeddings summed into one token, so that a reward sits in the token of its action; on the 5-arm bandit it
trained to a far lower loss in the same budget, docs/icrl.md). What the two agents learn differs only in
the data and the label:

- DPT: sample `context_query` (K-1 transitions of one task drawn at random, with replacement, then a query
  step); the label at each "s" token is the task's optimal action in that state (the dataset's per-episode
  `optimal` table, `seqrl.data.icrl_collect`). So every position is a DPT query (s_t) against a context
  (the random transitions before it); the paper's loss over every context prefix, with the query's own
  position included. The order of the context is random at every draw.
- AD: sample `histories` (K consecutive steps of a source algorithm's learning history, across episode
  ends); the label is the action the source took next.

Acting (`act`/`observe`): m `backbone.step` calls per env step ("s", then the chosen "a", then "r" when
the reward comes back; "s ar" keeps the action's embedding until its reward comes); episode ends keep the
state (the context grows across episodes). The transformer attends to the last m(K-1)+1 tokens, cached,
exactly what the last "s" token of a K-transition training window sees, so acting beyond K transitions is sliding-window attention over the last K-1 transitions (with one
layer it equals re-reading the last K-1 transitions; deeper layers reach further back through the cached
keys of earlier tokens, as DT's cache does; tests/test_icrl.py checks both). Mamba's state
holds the whole context (no window); acting past K transitions is extrapolation, which
`seqrl.runners.icrl` refuses unless asked (`--extrapolate`). `encode` reads a given context in one
`forward` (DPT's offline mode, and the last-episode window), and `logits` queries a state without
adding it to the context.

Training feeds the backbone the first m(K-1)+1 tokens of a window: the last transition's "a"/"r" tokens
predict nothing and no "s" token sees them (as in `seqrl.policies.dt`), and m(K-1)+1 tokens fit the
transformer's window, so training takes the fused causal attention path.

The dataset must say which tasks it holds: an in-context agent built on a dataset without the recipe
`seqrl collect` records for in-context data is a DataError; the recipe (kind, env id and kwargs, training
task ids) goes into `spec.meta["icrl"]`, so every checkpoint carries it for `seqrl icrl` to check the test
tasks against.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from seqrl.data.samplers import context_query, histories
from seqrl.data.store import Batch, ReplayStore, to_device
from seqrl.errors import DataError
from seqrl.nn.gtrxl import GTrXL
from seqrl.nn.mamba import MambaBackbone
from seqrl.nn.transformer import CausalTransformer, gpt2_init
from seqrl.policies.base import ActionHead, Agent, EvalProtocol, TaskSpec
from seqrl.presets import require_at_least, require_in
from seqrl.tokenizer import TrajectoryTokenizer


@dataclass(frozen=True)
class ICRLConfig:
    """Our CPU-scale defaults (agents/dpt.toml, agents/ad.toml say where they come from)."""

    # model
    backbone: Literal["transformer", "mamba", "gtrxl"] = "transformer"
    """the sequence model over the context (gtrxl: Gated Transformer-XL, its memory the transformer's window)"""
    tokens: Literal["s a r", "s ar"] = "s a r"
    """tokens per transition: "s a r" three (the tokenizer's in-context layout); "s ar" two, the state, then
    the action and reward embeddings summed in one token (a reward next to its action: easier to bind)"""
    embed_dim: int = 64
    """model width d"""
    n_layers: int = 3
    """transformer blocks or Mamba layers"""
    n_heads: int = 2
    """attention heads (transformer)"""
    rope: bool = False
    """transformer: rotary position embeddings in attention, the only order it sees (the in-context tokens carry
    no timestep). The presets turn it on; off is how checkpoints made before it existed were trained"""
    context_len: int = 100
    """K: transitions per training sample (DPT: K-1 context transitions and the query); the transformer acts
    on a sliding window of the last K-1 transitions, Mamba is trained for contexts up to K"""
    dropout: float = 0.0
    """dropout on embeddings, attention and residual branches (transformer)"""
    d_state: int = 16
    """Mamba: SSM state size N per channel"""
    d_conv: int = 4
    """Mamba: causal conv kernel"""
    expand: int = 2
    """Mamba: inner width E = expand * d"""
    reward_scale: float = 1.0
    """rewards are multiplied by this before embedding (the families' rewards are in [0, 1] or near it)"""
    # evaluation
    trial_episodes: int = 1
    """consecutive episodes of one task in a trial (`eval_protocol`; `seqrl icrl --episodes` overrides)"""

    def __post_init__(self):
        require_at_least(self, 1, ("embed_dim", "n_layers", "n_heads", "d_state", "d_conv", "expand",
                                   "trial_episodes"))
        require_at_least(self, 2, ("context_len",))
        require_in(self, 0.0, 1.0, ("dropout",))
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.backbone != "mamba" and self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by n_heads {self.n_heads}")


@dataclass
class ICBatch:
    """A sampled Batch (B, K) and the action label at each step (B, K)."""

    batch: Batch
    label: torch.Tensor  # (B, K) int64

    def to(self, device: torch.device | str) -> "ICBatch":
        return ICBatch(self.batch.to(device), to_device(self.label, device))


@dataclass
class ICState:
    mem: Any  # the backbone's state: KVState or MambaState
    greedy: bool  # argmax actions (DPT offline) or samples from the predicted distribution
    generator: torch.Generator | None  # for the samples
    pending: torch.Tensor | None = None  # "s ar": the action's embedding (n, d), waiting for its reward


def icrl_recipe(spec: TaskSpec) -> dict[str, Any] | None:
    """The in-context recipe of the agent's data: spec.meta["icrl"] (a checkpoint), else the recipe the
    dataset records; None for a store made in Python (no dataset id). DataError for a dataset without one."""
    if "icrl" in spec.meta:
        return spec.meta["icrl"]
    did = spec.meta.get("dataset_id")
    if did is None:
        return None
    from seqrl.data.minari_io import dataset_exists, dataset_recipe

    rec = dataset_recipe(did) if dataset_exists(did) else None
    if not rec or "icrl" not in rec:
        raise DataError(f"dataset {did!r} records no task ids: in-context agents train on datasets made by "
                        f"`seqrl collect --env FAMILY --quality dpt|ad-...` (one stream per task)")
    return rec


def state_strides(space: gym.Space) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, stride) per observation feature: state number = sum((obs - start) * stride), row-major (the
    order of `seqrl.data.icrl_collect.state_index`). Discrete and MultiDiscrete states only."""
    if isinstance(space, gym.spaces.Discrete):
        return torch.tensor([int(space.start)]), torch.ones(1, dtype=torch.long)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = [int(v) for v in space.nvec.reshape(-1)]
        return (torch.as_tensor(space.start.reshape(-1).astype(np.int64)),
                torch.tensor([int(np.prod(nvec[j + 1 :])) for j in range(len(nvec))]))
    raise DataError(f"observation space {space}: DPT's labels need Discrete or MultiDiscrete states")


class InContextAgent(Agent):
    """The network and acting shared by DPT and AD; subclasses choose the sampler and the label."""

    Config = ICRLConfig
    episode_joins_fixed_context = False
    """acting from a fixed context (offline evaluation): whether the current episode's transitions join it
    (AD, whose histories always end with the current episode's steps) or not (DPT, a query state against a
    context set)"""

    def __init__(self, config: ICRLConfig, spec: TaskSpec):
        super().__init__()
        if not isinstance(spec.action_space, gym.spaces.Discrete):
            raise DataError(f"{type(self).__name__} acts in Discrete action spaces, got {spec.action_space}")
        recipe = icrl_recipe(spec)
        self.config = config
        self.spec = spec if recipe is None else dataclasses.replace(spec, meta={**spec.meta, "icrl": recipe})
        d, K = config.embed_dim, config.context_len
        self.m = m = len(config.tokens.split())  # tokens per transition
        self.tokenizer = TrajectoryTokenizer("s a r", spec.observation_space, spec.action_space, d,
                                             readout={"action": "s"}, obs_mean=spec.obs_mean, obs_std=spec.obs_std,
                                             reward_scale=config.reward_scale, max_timestep=0, dropout=config.dropout)
        if config.backbone == "transformer":
            # window m(K-1)+1: what the "s" token of the last transition of a K-window sees
            self.backbone = CausalTransformer(d, config.n_layers, config.n_heads, window=m * (K - 1) + 1,
                                              dropout=config.dropout, activation="gelu", rope=config.rope)
        elif config.backbone == "gtrxl":  # a token attends to itself and the M before it: the same window
            self.backbone = GTrXL(d, config.n_layers, config.n_heads, memory=m * (K - 1))
        else:
            self.backbone = MambaBackbone(d, config.n_layers, config.d_state, config.d_conv, config.expand)
        self.head = ActionHead(d, spec.action_space)
        for part in (self.tokenizer, self.head):
            part.apply(functools.partial(gpt2_init, n_layers=config.n_layers))
        self._checked: tuple[int, int] | None = None  # (id, episodes_added) of the last store checked

    # --------------------------------------------------------------------------------- training
    def _check_store(self, store: ReplayStore) -> None:
        key = (id(store), store.episodes_added)
        if self._checked == key:
            return
        if not store.episode_meta or any("task" not in m for m in store.episode_meta):
            raise DataError(f"{store.meta.get('dataset_id', 'the store')}: episodes without a task id (meta "
                            f"'task'); in-context agents need one stream per task (`seqrl collect` in-context data)")
        self._checked = key

    def predict(self, batch: Batch) -> torch.Tensor:
        """(B, K) transitions -> action logits (B, K, A), read at each "s" token."""
        x = self.tokenizer(batch).x  # (B, 3K, d): s, a, r of each transition
        B, m = x.shape[0], self.m
        x = self._group(x.view(B, -1, 3, x.shape[-1]))  # (B, K*m, d)
        h, _ = self.backbone(x[:, : x.shape[1] - (m - 1)].to(self._dtype()))  # (B, mK-m+1, d): module docstring
        h = F.pad(h, (0, 0, 0, m - 1)).view(B, -1, m, h.shape[-1])  # (B, K, m, d)
        return self.head(h[:, :, 0])  # read at the "s" tokens

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C, 3, d) s, a, r embeddings -> (..., C*m, d) backbone tokens (module docstring)."""
        if self.m == 2:
            x = torch.stack([x[..., 0, :], x[..., 1, :] + x[..., 2, :]], -2)  # (..., C, 2, d)
        return x.flatten(-3, -2)

    def losses(self, b: ICBatch) -> dict[str, torch.Tensor]:
        return self.head.loss(self.predict(b.batch), b.label, b.batch.mask)

    # ----------------------------------------------------------------------------------- acting
    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol((("online", {}),), episodes=self.config.trial_episodes)

    def initial_state(self, n_envs: int, device: torch.device | str, greedy: bool = False,
                      seed: int | None = None) -> ICState:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
        return ICState(self.backbone.initial_state(n_envs, device, self._dtype()), greedy, gen)

    def _dtype(self) -> torch.dtype:
        return self.head.out.weight.dtype

    def _tok(self, mod: str, x: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.step(mod, x, None).to(self._dtype())

    @torch.no_grad()
    def logits(self, obs: torch.Tensor, state: ICState) -> tuple[torch.Tensor, ICState]:
        """obs (n, *obs_shape) -> logits (n, A) and the state with s_t added (`act` goes on from it)."""
        h, mem = self.backbone.step(self._tok("s", obs), state.mem)
        return self.head(h), ICState(mem, state.greedy, state.generator, state.pending)

    def choose(self, logits: torch.Tensor, state: ICState) -> torch.Tensor:
        if state.greedy:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=state.generator)[:, 0]

    @torch.no_grad()
    def feed_action(self, action: torch.Tensor, state: ICState) -> ICState:
        if self.m == 2:  # the action waits for its reward: one token for both
            return ICState(state.mem, state.greedy, state.generator, self._tok("a", action))
        _, mem = self.backbone.step(self._tok("a", action), state.mem)
        return ICState(mem, state.greedy, state.generator)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: ICState) -> tuple[torch.Tensor, ICState]:
        """obs (n, *obs_shape) -> actions (n,); the context gains s_t and a_t."""
        logits, state = self.logits(obs, state)
        action = self.choose(logits, state)
        return action, self.feed_action(action, state)

    @torch.no_grad()
    def observe(self, state: ICState, reward: torch.Tensor, done: torch.Tensor) -> ICState:
        """The reward joins the context; episode ends keep it (in-context learning across episodes)."""
        tok = self._tok("r", reward)
        _, mem = self.backbone.step(tok if self.m == 3 else state.pending + tok, state.mem)
        return ICState(mem, state.greedy, state.generator)

    @torch.no_grad()
    def encode(self, obs: Any, act: torch.Tensor, rew: torch.Tensor, greedy: bool = False,
               generator: torch.Generator | None = None) -> ICState:
        """A given context, (n, C) transitions (obs (n, C, *obs_shape)), read in one forward -> the state
        after it. For the transformer, only the last K-1 transitions count (its window)."""
        x = self._group(torch.stack([self._tok("s", obs), self._tok("a", act), self._tok("r", rew)], 2))  # (n, Cm, d)
        _, mem = self.backbone(x, self.backbone.initial_state(x.shape[0], x.device, x.dtype))
        return ICState(mem, greedy, generator)


class DPT(InContextAgent):
    """Decision-Pretrained Transformer: predicts the optimal action for a query from a random context."""

    def _labels(self, store: ReplayStore) -> torch.Tensor:
        """(streams, S) optimal action per stream and state, from the episodes' `optimal` tables."""
        key = (id(store), store.episodes_added, str(store.device))
        if getattr(self, "_table_key", None) != key:
            self._check_store(store)
            meta, stream = store.episode_meta, np.asarray(store.stream)
            if any("optimal" not in m for m in meta):
                raise DataError(f"{store.meta.get('dataset_id', 'the store')}: episodes without an 'optimal' table; "
                                f"DPT trains on `seqrl collect --quality dpt` data")
            S = len(meta[0]["optimal"])
            table = np.full((int(stream.max()) + 1, S), -100, np.int64)  # -100: no label
            for s, m in zip(stream.tolist(), meta):
                table[s] = m["optimal"]
            if table.max() >= int(self.spec.action_space.n):
                raise DataError(f"optimal actions up to {table.max()} in the dataset, but the action space is "
                                f"{self.spec.action_space}")
            self._table, self._table_key = torch.as_tensor(table, device=store.device), key
        return self._table

    def __init__(self, config: ICRLConfig, spec: TaskSpec):
        super().__init__(config, spec)
        start, stride = state_strides(spec.observation_space)  # buffers: no host copy while sampling
        self.register_buffer("state_start", start, persistent=False)
        self.register_buffer("state_stride", stride, persistent=False)

    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> ICBatch:
        table = self._labels(store)
        b = context_query(store, batch_size, self.config.context_len - 1, generator)  # (B, K)
        obs = b.obs.view(*b.obs.shape[:2], -1).long()  # (B, K, features)
        state = ((obs - self.state_start.to(obs.device)) * self.state_stride.to(obs.device)).sum(-1)  # (B, K)
        return ICBatch(b, table[b.stream, state])


class AD(InContextAgent):
    """Algorithm Distillation: predicts the source algorithm's next action from its history across episodes."""

    episode_joins_fixed_context = True

    def sample(self, store: ReplayStore, batch_size: int, generator: torch.Generator | None = None) -> ICBatch:
        self._check_store(store)
        b = histories(store, batch_size, self.config.context_len, generator)
        return ICBatch(b, b.act)
