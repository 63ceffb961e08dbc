"""Presets: typed, frozen dataclasses filled from TOML files and `--set key=value` overrides.

Every tunable value has a default in a dataclass. A preset file (``agents/*.toml``, ``envs/*.toml``)
overrides some of them, and the command line overrides the file. Field names in TOML map 1:1 to the
dataclasses; an unknown key, a missing preset or a value of the wrong type raises `PresetError`
naming the key. Parsing is the standard library's `tomllib`; this module only checks types.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from seqrl.errors import PresetError

ROOT = Path(__file__).resolve().parent.parent
AGENTS_DIR = ROOT / "agents"
ENVS_DIR = ROOT / "envs"


# ----------------------------------------------------------------------------------------- validation
def require_at_least(config: Any, minimum: float, names: tuple[str, ...]) -> None:
    """ValueError naming the first field of `names` below `minimum` (a config's __post_init__)."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def require_device(device: str) -> None:
    try:
        import torch

        torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from e


def training_device(device: str):
    """runner.device as a torch.device, for a runner about to train on it: CUDA on a machine without
    it is a PresetError (the config check above only knows the name is a device)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PresetError(f"runner.device={device!r}, but this machine has no CUDA device")
    return dev


# --------------------------------------------------------------------------------------------- runner
@dataclass(frozen=True)
class RunnerConfig:
    """Optimisation, logging and checkpoint settings shared by every offline agent."""

    steps: int = 100_000
    """gradient steps in total"""
    batch_size: int = 64
    """windows per gradient step (the global batch: split across DDP ranks)"""
    lr: float = 1e-4
    """peak learning rate of AdamW"""
    weight_decay: float = 1e-4
    """AdamW weight decay, applied to matrices only (see `param_groups`)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    warmup_steps: int = 10_000
    """linear warm-up from 0 to `lr`, then constant (Chen et al. 2021)"""
    grad_clip: float = 0.25
    """max global gradient norm; 0 disables clipping"""
    eval_every: int = 10_000
    """gradient steps between evaluations (0: only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation, run together in a vector env"""
    log_every: int = 100
    """gradient steps between TensorBoard scalars"""
    checkpoint_every: int = 10_000
    """gradient steps between checkpoints (a final one is always written)"""
    seed: int = 0
    """seeds torch, numpy and the evaluation envs"""
    device: str = "cpu"
    """torch device for training and evaluation: cpu, cuda, cuda:1, ..."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)"""
    compile: bool = False
    """torch.compile the policy's loss on CUDA"""
    cuda_graph: bool = True
    """on one CUDA device, capture a whole update (window sampling, forward, backward, clipping, AdamW) as
    one CUDA graph and replay it: small models are otherwise bound by kernel-launch overhead"""
    store_on_device: bool = True
    """copy the replay store to the training device so sampling never crosses PCIe"""

    def __post_init__(self):
        require_at_least(self, 1, ("steps", "batch_size", "log_every"))
        require_at_least(self, 0, ("warmup_steps", "eval_every", "eval_episodes", "checkpoint_every"))
        if not self.lr > 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, grad_clip and weight_decay >= 0")
        require_device(self.device)


@dataclass(frozen=True)
class OnlineRunnerConfig:
    """Rollouts, PPO and logging settings of the online agents (gtrxl, lstm_ppo): `seqrl.runners.online`.

    Defaults follow CleanRL's PPO (Huang et al. 2022, "The 37 implementation details of PPO")."""

    # rollouts
    total_steps: int = 500_000
    """environment steps in total, over all envs"""
    n_envs: int = 16
    """parallel environments (a Gymnasium sync vector env)"""
    n_steps: int = 128
    """steps per env per rollout; one rollout feeds one PPO update"""
    seq_len: int = 32
    """truncated BPTT: rollouts are cut into sequences of this many steps, each replayed from the memory
    recorded when it was collected; must divide n_steps"""
    # PPO
    epochs: int = 4
    """passes over each rollout"""
    minibatches: int = 4
    """minibatches per pass; each holds whole sequences, so n_envs * n_steps / seq_len must divide evenly"""
    lr: float = 2.5e-4
    """Adam learning rate"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over total_steps"""
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
    max_grad_norm: float = 0.5
    """global gradient-norm clip; 0 disables"""
    target_kl: float = 0.0
    """stop an update's epochs early when the approximate KL exceeds this; 0 disables"""
    # evaluation, logging, checkpoints
    eval_every: int = 0
    """PPO updates between evaluations (0: only at the end)"""
    eval_episodes: int = 20
    """episodes per evaluation (deterministic actions), run together in a vector env"""
    log_every: int = 1
    """PPO updates between TensorBoard scalars"""
    checkpoint_every: int = 50
    """PPO updates between checkpoints (a final one is always written)"""
    seed: int = 0
    """seeds torch and the envs"""
    device: str = "cpu"
    """torch device of the policy (envs step on the CPU): cpu, cuda, cuda:1, ..."""

    def __post_init__(self):
        require_at_least(self, 1, ("total_steps", "n_envs", "n_steps", "seq_len", "epochs", "minibatches", "log_every"))
        require_at_least(self, 0, ("eval_every", "eval_episodes", "checkpoint_every"))
        if self.n_steps % self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} does not divide n_steps {self.n_steps}")
        if (self.n_envs * self.n_steps // self.seq_len) % self.minibatches:
            raise ValueError(f"minibatches {self.minibatches} does not divide the {self.n_envs * self.n_steps // self.seq_len} "
                             f"sequences of a rollout (n_envs * n_steps / seq_len)")
        if not self.lr > 0 or not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1 or not self.clip_coef > 0:
            raise ValueError("lr and clip_coef must be > 0, gamma and gae_lambda in [0, 1]")
        if min(self.vf_clip, self.ent_coef, self.vf_coef, self.max_grad_norm, self.target_kl) < 0:
            raise ValueError("vf_clip, ent_coef, vf_coef, max_grad_norm and target_kl must be >= 0")
        require_device(self.device)


# --------------------------------------------------------------------------------------- environments
@dataclass(frozen=True)
class CollectConfig:
    """How `seqrl collect` builds the datasets of one task."""

    source: Literal["sb3", "scripted"] = "sb3"
    """sb3: train a stable-baselines3 agent and roll out its checkpoints; scripted: a hand-written controller"""
    algo: Literal["SAC", "TD3", "PPO"] = "SAC"
    """stable-baselines3 algorithm used to train the behaviour policies (D4RL used SAC)"""
    train_steps: int = 1_000_000
    """environment steps of SB3 training; its final policy is the expert"""
    checkpoint_every: int = 50_000
    """SB3 checkpoint interval; collection resumes from the newest one after an interruption"""
    medium_fraction: float = 1 / 3
    """medium = the checkpoint whose return is closest to this fraction of the expert's (D4RL)"""
    n_steps: int = 1_000_000
    """transitions in each of the random / medium / expert datasets (D4RL: 1M)"""
    n_envs: int = 8
    """parallel environments while rolling out a behaviour policy"""
    checkpoint_eval_episodes: int = 5
    """episodes per SB3 checkpoint to rate it when picking the medium policy"""
    medium_epsilon: float = 0.7
    """scripted source only: probability of a uniformly random action in 'medium' data"""

    def __post_init__(self):
        require_at_least(self, 1, ("train_steps", "checkpoint_every", "n_steps", "n_envs", "checkpoint_eval_episodes"))
        if not 0.0 <= self.medium_epsilon <= 1.0 or not 0.0 < self.medium_fraction < 1.0:
            raise ValueError("medium_epsilon must be in [0, 1] and medium_fraction in (0, 1)")


@dataclass(frozen=True)
class EnvPreset:
    """A task: the Gymnasium env, the dataset namespace and the D4RL-style reference scores."""

    name: str = ""
    """short name used on the command line (`--env hopper`)"""
    env_id: str = ""
    """Gymnasium id of the evaluation environment"""
    dataset_prefix: str = ""
    """Minari ids are `{dataset_prefix}/{quality}-v0`"""
    ref_min_score: float = 0.0
    """return of a random policy: normalised score 0"""
    ref_max_score: float = 1.0
    """return of an expert policy: normalised score 100"""
    reward_scale: float = 0.001
    """returns-to-go are multiplied by this before embedding (DT: 1/1000 on Gym MuJoCo)"""
    target_returns: tuple[float, ...] = (3600.0, 1800.0)
    """returns a conditioned policy is evaluated at, first is the main one"""
    max_episode_steps: int = 1000
    """episode length limit; also the size of the timestep embedding"""
    qualities: tuple[str, ...] = ("random", "medium", "expert", "medium-replay", "medium-expert")
    """the datasets `seqrl collect` can build for this task"""
    collect: CollectConfig = field(default_factory=CollectConfig)
    env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """keyword arguments of the env's constructor (`gym.make(env_id, **env_kwargs)`), e.g. a memory length"""

    def __post_init__(self):
        if self.ref_max_score == self.ref_min_score:
            raise ValueError("ref_max_score must differ from ref_min_score")
        if not self.target_returns:
            raise ValueError("target_returns needs at least one return")
        if self.max_episode_steps < 1:
            raise ValueError("max_episode_steps must be >= 1")

    def dataset_id(self, quality: str) -> str:
        if quality not in self.qualities:
            raise PresetError(f"unknown quality {quality!r} for env {self.name!r}; one of {list(self.qualities)}")
        return f"{self.dataset_prefix}/{quality}-v0"

    @property
    def ref_scores(self) -> tuple[float, float]:
        return self.ref_min_score, self.ref_max_score


# ------------------------------------------------------------------------------------------- building
def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise PresetError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PresetError(f"{key}: expected a table, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise PresetError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check(value, arg, key)
            except PresetError:
                pass
        raise PresetError(f"{key}: {value!r} does not fit {tp}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PresetError(f"{key}: expected a table, got {value!r}")
        return {_check(k, key_tp, key): _check(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise PresetError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise PresetError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_check(v, a, key) for v, a in zip(value, args))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PresetError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PresetError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise PresetError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise PresetError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")  # a bug in a config class, not user input


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a (nested) dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PresetError(f"unknown key '{prefix}{unknown[0]}'; known keys: {sorted(names)}")
    kwargs = {k: _check(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation: messages start with the field name
        raise PresetError(f"{prefix}{e}") from e


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["runner.steps=10", "policy.dropout=0.0"]` -> nested dict. Values are TOML (bare words: strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PresetError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as `device=cuda`
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PresetError(f"override {key!r}: {p!r} is not a table")
        node[leaf] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(name_or_path: str | Path, directory: Path, kind: str) -> tuple[dict[str, Any], Path]:
    """Read `directory/{name}.toml`, or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = directory / f"{name_or_path}.toml"
    if not path.is_file():
        if not directory.is_dir():
            raise PresetError(f"no {kind} presets: {directory} is missing. Presets live in the repository's "
                              f"agents/ and envs/ folders; install seqrl from a checkout with `pip install -e .`")
        known = sorted(p.stem for p in directory.glob("*.toml"))
        raise PresetError(f"unknown {kind} preset {str(name_or_path)!r}; known: {known}")
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from e


@dataclass(frozen=True)
class AgentPreset:
    """An agent: which policy class, its config and the runner's config."""

    agent: str
    policy: Any
    runner: RunnerConfig | OnlineRunnerConfig

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "policy": dataclasses.asdict(self.policy), "runner": dataclasses.asdict(self.runner)}


def agent_from_dict(values: dict[str, Any]) -> AgentPreset:
    from seqrl.policies import policy_class

    values = dict(values)
    agent = values.pop("agent", None)
    if not isinstance(agent, str):
        raise PresetError("agent preset: missing key 'agent' (e.g. agent = \"dt\")")
    cls = policy_class(agent)
    unknown = sorted(set(values) - {"policy", "runner"})
    if unknown:
        raise PresetError(f"unknown key {unknown[0]!r} in agent preset; known: ['agent', 'policy', 'runner']")
    return AgentPreset(
        agent=agent,
        policy=build(cls.Config, values.get("policy", {}), prefix="policy."),
        # online agents declare their own runner config (OnlineRunnerConfig); offline ones use RunnerConfig
        runner=build(getattr(cls, "RunnerConfig", RunnerConfig), values.get("runner", {}), prefix="runner."),
    )


def load_agent(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AgentPreset:
    values, _ = read_toml(name_or_path, AGENTS_DIR, "agent")
    return agent_from_dict(merge(values, overrides or {}))


def load_env(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> EnvPreset:
    values, _ = read_toml(name_or_path, ENVS_DIR, "env")
    return build(EnvPreset, merge(values, overrides or {}))


def find_env_for_dataset(dataset_id: str) -> EnvPreset | None:
    """The env preset whose dataset_prefix owns `dataset_id` (e.g. seqrl/hopper/medium-v0 -> hopper)."""
    for path in sorted(ENVS_DIR.glob("*.toml")):
        env = load_env(path)
        if dataset_id.startswith(env.dataset_prefix + "/"):
            return env
    return None


def find_env_for_id(env_id: str) -> EnvPreset | None:
    """The env preset of Gymnasium id `env_id` (e.g. seqrl/TMaze-v0 -> tmaze), if one exists."""
    for path in sorted(ENVS_DIR.glob("*.toml")):
        env = load_env(path)
        if env.env_id == env_id:
            return env
    return None
